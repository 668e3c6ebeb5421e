"""Evaluation: confusion matrices, per-class and super-class scores, label schemes, model scoring.

>>> from xcloud.evaluation import evaluate_model
>>> result = evaluate_model("ukis-6b-l1c", image, labels,  # doctest: +SKIP
...                         label_scheme="ukis-csmask-testfile", resolution=30)
>>> print(result.table())  # doctest: +SKIP
"""

from __future__ import annotations

from .evaluate import (
    SUPERCLASSES,
    Comparison,
    Evaluation,
    FeatureImportance,
    evaluate_model,
    evaluate_models,
    feature_importance,
    superclass_metrics,
)
from .metrics import ConfusionMatrix, binary_metrics
from .schemes import (
    IGNORE,
    LEVELS,
    LabelScheme,
    Level,
    SchemeClass,
    SchemeError,
    finest_shared_level,
    get_level,
    get_scheme,
    register_scheme,
    scheme_names,
    scheme_of_model,
)

__all__ = [
    "IGNORE",
    "LEVELS",
    "SUPERCLASSES",
    "Comparison",
    "ConfusionMatrix",
    "Evaluation",
    "FeatureImportance",
    "LabelScheme",
    "Level",
    "SchemeClass",
    "SchemeError",
    "binary_metrics",
    "evaluate_model",
    "evaluate_models",
    "feature_importance",
    "finest_shared_level",
    "get_level",
    "get_scheme",
    "register_scheme",
    "scheme_names",
    "scheme_of_model",
    "superclass_metrics",
]
