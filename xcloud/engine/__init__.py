"""The engine: chunking with halos, tiling and blending, batching, devices, per-worker models."""

from __future__ import annotations

from .cache import ModelSpec, clear_cache, get_model, load_counts
from .cluster import local_cluster, worker_environment
from .device import resolve_device, threads_per_task
from .predict import predict

__all__ = [
    "ModelSpec",
    "clear_cache",
    "get_model",
    "load_counts",
    "local_cluster",
    "predict",
    "resolve_device",
    "threads_per_task",
    "worker_environment",
]
