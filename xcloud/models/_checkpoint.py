"""Checkpoint files that never unpickle: tensors plus a JSON metadata string.

Two layouts are read and written:

- ``.safetensors``: the tensors, with the metadata string in the header under ``key``;
- ``.pt``/``.pth``: a plain dict ``{"state_dict": tensors, key: metadata string}`` that
  ``torch.load(path, weights_only=True)`` reads.

The metadata format (what the JSON says) belongs to each model module; these helpers only
move tensors and the string, and check that tensors fit a network.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._optional import import_optional
from ..errors import MissingWeightsError, WeightsError

__all__ = ["SUFFIXES", "check_suffix", "dump_metadata", "load_state", "load_weights_only",
           "parse_metadata", "read_checkpoint", "write_checkpoint"]

SUFFIXES = (".safetensors", ".pt", ".pth")
"""File endings of checkpoints: safetensors, or a weights-only torch file."""


def check_suffix(path: str | os.PathLike[str]) -> str:
    """The suffix of ``path``; :class:`WeightsError` unless it is one of :data:`SUFFIXES`."""
    suffix = Path(path).suffix
    if suffix not in SUFFIXES:
        raise WeightsError(f"checkpoint {path} must end in {', '.join(SUFFIXES)} "
                           "(safetensors or a weights-only torch file)")
    return suffix


def dump_metadata(data: Mapping[str, Any], *, format_name: str, version: int) -> str:
    """``data`` as a metadata string marked with its format; :class:`WeightsError` if ``data``
    is not JSON serialisable."""
    try:
        return json.dumps({"format": format_name, "format_version": version, **data})
    except (TypeError, ValueError) as error:
        raise WeightsError(f"checkpoint metadata must be JSON serialisable: {error}; "
                           "pass plain numbers, strings, lists and dicts in extra") from None


def parse_metadata(text: str, *, format_name: str) -> dict[str, Any]:
    """The data of a :func:`dump_metadata` string (without the format marks); ``ValueError``
    if it is not JSON marked ``format_name``."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.pop("format", None) != format_name:
        raise ValueError(f"it is not marked format={format_name!r}")
    data.pop("format_version", None)
    return data


def write_checkpoint(path: str | os.PathLike[str], network: nn.Module, *, key: str,
                     metadata: str) -> Path:
    """Write the tensors of ``network`` and the ``metadata`` string to ``path``, atomically.

    Parameters
    ----------
    path
        ``.safetensors``, ``.pt`` or ``.pth`` (see the module docstring).
    network
        The module whose ``state_dict`` is written (copied to the CPU, contiguous).
    key
        Name of the metadata entry (e.g. ``"xcloud_sensei_v2"``).
    metadata
        The metadata, usually JSON.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    suffix = check_suffix(path)
    state = {name: tensor.detach().to("cpu", copy=True).contiguous()
             for name, tensor in network.state_dict().items()}
    partial = path.with_name(f".{path.name}.partial")
    if suffix == ".safetensors":
        safetensors_torch = import_optional("safetensors.torch", extra="training")
        safetensors_torch.save_file(state, str(partial), metadata={key: metadata})
    else:
        torch.save({"state_dict": state, key: metadata}, partial)
    os.replace(partial, path)
    return path


def _read_safetensors(path: Path, key: str,
                      device: str) -> tuple[dict[str, torch.Tensor], str]:
    safetensors = import_optional("safetensors", extra="training")
    try:
        with safetensors.safe_open(str(path), framework="pt", device=device) as handle:
            text = (handle.metadata() or {}).get(key, "")
            return {name: handle.get_tensor(name) for name in handle.keys()}, text  # noqa: SIM118
    except (safetensors.SafetensorError, OSError) as error:
        raise WeightsError(f"{path} is not a readable safetensors file ({error})") from None


def load_weights_only(path: Path, *, map_location: str | torch.device, advice: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never pickled code.

    Parameters
    ----------
    path
        A ``.pt``/``.pth``/``.ckpt`` file.
    map_location
        Where the tensors go.
    advice
        What the user should save instead, for the error message.

    Returns
    -------
    Any
        What the file holds.

    Raises
    ------
    WeightsError
        The file cannot be read without unpickling Python objects, or is not a torch file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise WeightsError(
            f"{path} cannot be read as a weights-only torch file ({error}); xcloud never "
            f"unpickles Python objects: {advice}"
        ) from None


def _read_torch(path: Path, key: str, device: str) -> tuple[dict[str, torch.Tensor], str]:
    content = load_weights_only(path, map_location=device,
                                advice="save a plain dict of tensors")
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict):
        raise WeightsError(f"{path} is not an xcloud checkpoint (no 'state_dict' entry); "
                           "write checkpoints with the model module's save_checkpoint")
    return content["state_dict"], str(content.get(key, ""))


def read_checkpoint(path: str | os.PathLike[str], *, key: str,
                    map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors and metadata string of a :func:`write_checkpoint` file.

    Raises
    ------
    MissingWeightsError
        ``path`` does not exist.
    WeightsError
        It has another suffix or cannot be read without unpickling.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"checkpoint {path} does not exist")
    reader = _read_safetensors if check_suffix(path) == ".safetensors" else _read_torch
    return reader(path, key, str(map_location))


def load_state(network: nn.Module, tensors: Mapping[str, torch.Tensor], *,
               source: object) -> None:
    """Load ``tensors`` into ``network``; :class:`WeightsError` naming missing, unexpected or
    misshapen tensors (the first five) unless keys and shapes match exactly."""
    expected = {name: tuple(value.shape) for name, value in network.state_dict().items()}
    given = {name: tuple(value.shape) for name, value in tensors.items()
             if isinstance(value, torch.Tensor)}
    problems = [f"missing {name}" for name in expected.keys() - given.keys()]
    problems += [f"unexpected {name}" for name in tensors.keys() - expected.keys()]
    problems += [f"{name} is {given[name]}, not {shape}" for name, shape in expected.items()
                 if name in given and given[name] != shape]
    if problems:
        shown = "; ".join(sorted(problems)[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightsError(f"the tensors of {source} do not fit the network its metadata "
                           f"describes: {shown}{more}")
    network.load_state_dict(tensors, strict=True)
