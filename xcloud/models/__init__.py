"""Models: the protocol, the registry and the built-in models.

>>> import xcloud
>>> xcloud.models.list()  # doctest: +SKIP
['s2cloudless', 'ukis-4b-l1c', 'ukis-4b-l2a', 'ukis-6b-l1c', 'ukis-6b-l2a']
"""

from __future__ import annotations

from .classes import ClassScheme, CloudClass
from .protocol import BaseCloudModel, CloudModel, ModelInfo, Normalization
from .registry import (
    ENTRY_POINT_GROUP,
    ModelEntry,
    get,
    list_models,
    load,
    register,
    unregister,
)

list = list_models  # noqa: A001 - the public name is xcloud.models.list()

__all__ = [
    "ENTRY_POINT_GROUP",
    "BaseCloudModel",
    "ClassScheme",
    "CloudClass",
    "CloudModel",
    "ModelEntry",
    "ModelInfo",
    "Normalization",
    "get",
    "list",
    "list_models",
    "load",
    "register",
    "unregister",
]
