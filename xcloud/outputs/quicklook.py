"""Quick-look PNG: true-colour reflectance with the mask's classes drawn in their colours.

Written with numpy and zlib only (no imaging library needed), small enough to open anywhere.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .store import store_location

__all__ = ["quicklook_rgba", "write_png", "write_quicklook"]

_RGB_BANDS = (("B04", "red"), ("B03", "green"), ("B02", "blue"))
_CLEAR = {"clear", "land", "water", "snow"}


def _hex_rgb(color: str) -> tuple[int, int, int]:
    text = color.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def _stride(shape: tuple[int, ...], max_size: int) -> int:
    return max(1, int(np.ceil(max(shape[-2:]) / max_size)))


def _true_colour(data: xr.Dataset, step: int, brightness: float) -> np.ndarray | None:
    layers = []
    for names in _RGB_BANDS:
        name = next((n for n in names if n in data), None)
        if name is None:
            return None
        layer = data[name]
        layer = layer.isel(time=0) if "time" in layer.dims else layer
        layers.append(np.asarray(layer.values[::step, ::step], np.float32))
    rgb = np.clip(np.nan_to_num(np.stack(layers, -1)) / brightness, 0, 1) ** (1 / 2.2)
    return (rgb * 255).astype(np.uint8)


def quicklook_rgba(mask: xr.DataArray, data: xr.Dataset | None = None, *,
                   max_size: int = 1024, alpha: float = 0.55,
                   brightness: float = 0.3) -> np.ndarray:
    """An (H, W, 4) uint8 image: true colour (grey if ``data`` has no RGB) under the classes.

    Clear classes stay transparent; every other class of the mask's ``flag_values`` is blended
    in its ``flag_colors`` colour; no data is black.
    """
    labels = mask.isel(time=0) if "time" in mask.dims else mask
    step = _stride(labels.shape, max_size)
    values = np.asarray(labels.values[::step, ::step])
    base = _true_colour(data, step, brightness) if data is not None else None
    if base is None:
        base = np.full((*values.shape, 3), 96, np.uint8)
    image = base.astype(np.float32)
    meanings = str(mask.attrs.get("flag_meanings", "")).split()
    colors = str(mask.attrs.get("flag_colors", "")).split()
    for value, name, color in zip(mask.attrs.get("flag_values", []), meanings, colors,
                                  strict=False):
        where = values == value
        if name in _CLEAR or not where.any():
            continue
        weight = 1.0 if name == "no_data" else alpha
        image[where] = (1 - weight) * image[where] + weight * np.array(_hex_rgb(color))
    rgba = np.concatenate([image.astype(np.uint8), np.full((*values.shape, 1), 255, np.uint8)],
                          axis=-1)
    return rgba


def write_png(path: str | os.PathLike[str], rgba: np.ndarray, *,
              storage_options: Mapping[str, Any] | None = None) -> Path | str:
    """Write an (H, W, 4) uint8 array as an 8-bit RGBA PNG.

    ``path`` may be a URL fsspec reaches (``s3://bucket/masks/quicklook.png``, written in one
    PUT with ``storage_options``); the URL is returned for those, the ``Path`` for a file.
    """
    height, width = rgba.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8),
                           np.ascontiguousarray(rgba, np.uint8).reshape(height, -1)], axis=1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
           + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))
    if "://" not in os.fspath(path):
        target = Path(path)
        target.write_bytes(png)
        return target
    location = store_location(path, storage_options)
    location.write("", png)
    return Path(location.url) if location.local else location.url


def write_quicklook(path: str | os.PathLike[str], mask: xr.DataArray,
                    data: xr.Dataset | None = None, *, max_size: int = 1024,
                    storage_options: Mapping[str, Any] | None = None) -> Path | str:
    """Render :func:`quicklook_rgba` of the first time step and write it as PNG.

    ``path`` may be a URL (``s3://...`` with ``storage_options``), e.g. beside a store in a
    bucket.
    """
    return write_png(path, quicklook_rgba(mask, data, max_size=max_size),
                     storage_options=storage_options)
