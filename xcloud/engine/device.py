"""Device choice and thread settings for model execution inside Dask tasks."""

from __future__ import annotations

from .._threads import threads_per_task

__all__ = ["limit_torch_threads", "resolve_device", "threads_per_task"]


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` becomes ``"cuda"`` when torch sees a CUDA device, else ``"cpu"``; any other
    value must be a torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...), else a
    ``ValueError`` naming ``device=`` before any task runs."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a torch device ({error}); pass 'auto', "
                         "'cpu', 'cuda' or 'cuda:N'") from None
    return device


def limit_torch_threads(threads: int) -> None:
    """Set torch's intra-op threads (process-wide) when it differs."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
