"""File names from untrusted text (item ids, collection names): never a path of its own."""

from __future__ import annotations

import re

__all__ = ["safe_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, *, default: str = "item") -> str:
    """``text`` as one file name: runs of other characters become ``_``, no leading dots.

    ``"../../etc/x"`` gives ``"etc_x"``: no separator and no ``..`` can survive.
    """
    return _UNSAFE.sub("_", text).strip("._") or default
