"""Per-process model cache: each worker process loads a model once and reuses it.

Tasks carry only a small :class:`ModelSpec` (names and paths); the model object itself never
enters the task graph.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..models.fetch import is_weights_url
from ..models.protocol import CloudModel

__all__ = ["ModelSpec", "clear_cache", "get_model", "load_counts"]


@dataclass(frozen=True)
class ModelSpec:
    """What a task needs to find or load its model: hashable and cheap to pickle."""

    name: str
    weights: str | None = None
    device: str = "cpu"
    runtime: str = "auto"
    weights_version: tuple[int, int] | None = None
    bands: tuple[str, ...] | None = None
    precision: str = "float32"

    @classmethod
    def create(cls, name: str, *, weights: str | Path | None, device: str,
               runtime: str, bands: tuple[str, ...] | None = None,
               precision: str = "float32") -> ModelSpec:
        """Normalise paths so that equal files give equal keys; a rewritten file (new size or
        modification time) gives a new key, so a retrained checkpoint is loaded again.
        ``bands`` is for models that take any set of bands (SEnSeI-v2); ``precision`` is the
        inference precision (:data:`xcloud.models.registry.PRECISIONS`)."""
        if weights is None:
            return cls(name, None, device, runtime, None, bands, precision)
        if is_weights_url(weights):  # fetched by each process that loads it
            return cls(name, str(weights), device, runtime, None, bands, precision)
        path = Path(weights).expanduser().resolve()
        stat = path.stat() if path.exists() else None
        version = (stat.st_mtime_ns, stat.st_size) if stat else None
        return cls(name, str(path), device, runtime, version, bands, precision)


_MODELS: dict[ModelSpec, CloudModel] = {}
_LOADS: Counter[ModelSpec] = Counter()
_LOCK = threading.Lock()


def get_model(spec: ModelSpec) -> CloudModel:
    """The model for ``spec``, loaded on first use in this process."""
    model = _MODELS.get(spec)
    if model is not None:
        return model
    with _LOCK:
        if spec not in _MODELS:
            from ..models.registry import get

            _MODELS[spec] = get(spec.name).load(
                weights=spec.weights, device=spec.device, runtime=spec.runtime,
                bands=spec.bands, precision=spec.precision,
            )
            _LOADS[spec] += 1
        return _MODELS[spec]


def load_counts() -> dict[str, int]:
    """How many times each model was loaded in this process (keys
    ``name|weights|device|runtime``, then ``|precision`` where it is not float32)."""
    return {_load_key(s): n for s, n in _LOADS.items()}


def _load_key(spec: ModelSpec) -> str:
    key = f"{spec.name}|{spec.weights}|{spec.device}|{spec.runtime}"
    return key if spec.precision == "float32" else f"{key}|{spec.precision}"


def clear_cache() -> None:
    """Forget loaded models (and the load counts)."""
    with _LOCK:
        _MODELS.clear()
        _LOADS.clear()
