"""Quick-look PNG: true-colour reflectance with the mask's classes drawn in their colours.

Each class other than clear is tinted in its colour *and outlined* in a strong colour of its
own (a white cloud tinted white over a white cloud would not show where the mask ends), and a
legend strip under the image names each class with its swatch and its share of the valid
pixels. Written with numpy and zlib; the legend's text is drawn with Pillow when it is
installed (it comes with the ``plot`` extra), else the strip shows the swatches alone.
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

__all__ = ["CLEAR_CLASSES", "RGB_BANDS", "quicklook_rgba", "subsample_step", "write_png",
           "write_quicklook"]

RGB_BANDS = (("B04", "red"), ("B03", "green"), ("B02", "blue"))
"""The true-colour bands (red, green, blue), each by its names."""
CLEAR_CLASSES = frozenset({"clear", "land", "water", "snow"})
"""Classes left unpainted over the true colour."""
# outlines: strong colours that stand out on clouds, shadows and land alike, by class name
_OUTLINES = {"cloud": "#ffd400", "thick_cloud": "#ffd400", "semi_transparent_cloud": "#00e5ff",
             "thin_cloud": "#00e5ff", "cloud_shadow": "#ff2bd6", "undefined": "#ff7f00",
             "missing": "#ff0000", "no_data": "#ff0000"}
_OTHER_OUTLINES = ("#7fff00", "#ff7f00", "#00bfff", "#ff1493")
_LEGEND_ROW = 18


def _hex_rgb(color: str) -> tuple[int, int, int]:
    text = color.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def subsample_step(shape: tuple[int, ...], max_size: int) -> int:
    """Every how many pixels to take so that the longest side is at most ``max_size``."""
    return max(1, int(np.ceil(max(shape[-2:]) / max_size)))


def _true_colour(data: xr.Dataset, step: int, brightness: float) -> np.ndarray | None:
    layers = []
    for names in RGB_BANDS:
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
                   brightness: float = 0.3, legend: bool = False) -> np.ndarray:
    """An (H, W, 4) uint8 image: true colour (grey if ``data`` has no RGB) under the classes.

    Clear classes stay transparent; every other class of the mask's ``flag_values`` is blended
    in its ``flag_colors`` colour and outlined (1 px) in a strong colour of its own; no data
    is black. ``legend`` adds a strip under the image naming each class with its swatch and
    share of the pixels.
    """
    labels = mask.isel(time=0) if "time" in mask.dims else mask
    step = subsample_step(labels.shape, max_size)
    values = np.asarray(labels.values[::step, ::step])
    base = _true_colour(data, step, brightness) if data is not None else None
    if base is None:
        base = np.full((*values.shape, 3), 96, np.uint8)
    image = base.astype(np.float32)
    meanings = str(mask.attrs.get("flag_meanings", "")).split()
    colors = str(mask.attrs.get("flag_colors", "")).split()
    classes = list(zip(mask.attrs.get("flag_values", []), meanings, colors, strict=False))
    for index, (value, name, color) in enumerate(classes):
        where = values == value
        if name in CLEAR_CLASSES or not where.any():
            continue
        weight = 1.0 if name in ("no_data", "missing") else alpha
        image[where] = (1 - weight) * image[where] + weight * np.array(_hex_rgb(color))
        outline = _OUTLINES.get(name, _OTHER_OUTLINES[index % len(_OTHER_OUTLINES)])
        image[_edges(where)] = _hex_rgb(outline)
    rgba = np.concatenate([image.astype(np.uint8), np.full((*values.shape, 1), 255, np.uint8)],
                          axis=-1)
    if legend and classes:
        rgba = np.concatenate([rgba, _legend_strip(values, classes, rgba.shape[1])], axis=0)
    return rgba


def _edges(where: np.ndarray) -> np.ndarray:
    """Pixels of ``where`` with a 4-neighbour outside it (the region's outline, 1 px)."""
    padded = np.pad(where, 1, mode="edge")
    inside = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return where & ~inside


def _legend_strip(values: np.ndarray, classes: list[tuple[Any, str, str]],
                  width: int) -> np.ndarray:
    """Rows under the image: per class a swatch (fill and outline colour) and its name with
    its share of the valid pixels (of all pixels for no data)."""
    nodata = {value for value, name, _ in classes if name in ("no_data", "missing")}
    valid = max(1, int(np.isin(values, list(nodata), invert=True).sum()))
    entries = []
    for index, (value, name, color) in enumerate(classes):
        count = int((values == value).sum())
        share = 100 * count / (values.size if value in nodata else valid)
        outline = (color if name in CLEAR_CLASSES
                   else _OUTLINES.get(name, _OTHER_OUTLINES[index % len(_OTHER_OUTLINES)]))
        entries.append((f"{name} {share:.1f}%", _hex_rgb(color), _hex_rgb(outline)))
    per_row = max(1, width // 150)
    rows = -(-len(entries) // per_row)
    strip = np.full((rows * _LEGEND_ROW + 4, width, 4), (24, 24, 24, 255), np.uint8)
    for k, (_, fill, edge) in enumerate(entries):
        top, left = 3 + (k // per_row) * _LEGEND_ROW, 4 + (k % per_row) * (width // per_row)
        strip[top:top + 12, left:left + 12, :3] = edge
        strip[top + 2:top + 10, left + 2:left + 10, :3] = fill
    return _legend_text(strip, [text for text, _, _ in entries], per_row, width)


def _legend_text(strip: np.ndarray, texts: list[str], per_row: int, width: int) -> np.ndarray:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:  # the swatches alone; `pip install 'xcloud[plot]'` adds the names
        return strip
    picture = Image.fromarray(strip, "RGBA")
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    for k, text in enumerate(texts):
        top, left = 1 + (k // per_row) * _LEGEND_ROW, 20 + (k % per_row) * (width // per_row)
        draw.text((left, top), text, fill=(235, 235, 235, 255), font=font)
    return np.asarray(picture)


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
    """Render :func:`quicklook_rgba` of the first time step, with its legend strip, and write
    it as PNG.

    ``path`` may be a URL (``s3://...`` with ``storage_options``), e.g. beside a store in a
    bucket.
    """
    return write_png(path, quicklook_rgba(mask, data, max_size=max_size, legend=True),
                     storage_options=storage_options)
