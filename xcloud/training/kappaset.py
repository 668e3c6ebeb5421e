"""KappaSet: KappaZeta's Sentinel-2 cloud and cloud-shadow masks (Domnich et al. 2021).

Layout
------
The published data set is a tree of NetCDF4 sub-tiles, grouped by month and product::

    <root>/<month>/<product>/tile_X_Y.nc
    e.g. 2020_06/S2B_MSIL1C_20200611T093039_N0209_R136_T35VNE_20200611T114106/tile_3_7.nc

Each file is one square sub-tile (512 x 512 pixels at 10 m) of a Sentinel-2 product holding the
bands as float variables (L1C: :data:`KAPPASET_L1C_FEATURES`, 13 bands; L2A:
:data:`KAPPASET_L2A_FEATURES`, the same without B10 plus AOT and WVP), the manual labels
``Label`` (uint8, :data:`KAPPASET_LABELS`) and, for some products, the masks of other processors
to compare with (:data:`COMPARISON_MASKS`: FMC Fmask, SS2C s2cloudless, MAJAC MAJA), stored as
they are. Names such as ``T35VNE_20200611T093039_tile_3_7.nc``, and files inside per-tile folders
``tile_3_7/``, as KappaZeta's converter (cm-vsm) also writes them, are recognised too.

Axes and tile indices
---------------------
* The files call their dimensions ``("x", "y")`` but store the image row first: cm-vsm writes a
  row-major buffer under those names. This module therefore reads every variable by position,
  axis 0 being the row, and ignores the dimension names (files written with ``("y", "x")``
  read the same); what it returns has dimensions ``("y", "x")``. :func:`write_tile` writes
  the names the published files have.
* In ``tile_X_Y``, **X counts columns and Y rows**: the sub-tile's first pixel is at row
  ``Y * 512`` and column ``X * 512`` of the product (cm-vsm cuts sub-tiles with X along the
  image width, and KappaMask's own mosaic code pastes them that way). ``order="yx"`` swaps them.
* Some cm-vsm versions stored each sub-tile's rows bottom-up; ``mosaic(flip_rows=True)``
  assembles such files.

Values
------
Band values are used as stored, with one rule: if the largest finite value of the spectral
bands (all but AOT and WVP) in a tile exceeds :data:`DN_THRESHOLD` (2), the tile holds digital
numbers, and its spectral bands are divided by 10000 with an
:class:`~xcloud.errors.XcloudWarning` (and a ``rescaled`` attribute; AOT and WVP are left as
stored). ``scale=`` multiplies the spectral bands by a factor of your own instead (the rule
is then off), and AOT and WVP, stored the same way, by ten times that factor. cm-vsm stores
every band, AOT and WVP too, as the image library's 16-bit sample divided by 65535, i.e.
DN / 65535; ``scale=CM_VSM_SCALE`` turns such values into reflectance (DN / 10000) and AOT and
WVP into DN / 1000. Feature values that are NaN (no data) are set to 0 in :class:`KappaSetDataset`
samples, after normalisation.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import xarray as xr

from .._optional import import_optional
from ..errors import DatasetError, OptionalDependencyError, XcloudWarning
from ..synthetic import SPECTRA, SPECTRAL_BANDS, smooth_field

__all__ = [
    "CM_VSM_SCALE",
    "COMPARISON_MASKS",
    "DN_THRESHOLD",
    "KAPPASET_L1C_FEATURES",
    "KAPPASET_L2A_FEATURES",
    "KAPPASET_LABELS",
    "TILE_SIZE",
    "UNDEFINED",
    "KappaSetDataset",
    "KappaSetTile",
    "find_tiles",
    "mosaic",
    "read_tile",
    "synthetic_kappaset",
    "synthetic_masks",
    "write_tile",
]

PathLike = str | os.PathLike[str]

KAPPASET_L1C_FEATURES: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
"""The 13 L1C (top-of-atmosphere) bands, in the order of the image channels."""

KAPPASET_L2A_FEATURES: tuple[str, ...] = (
    *(name for name in KAPPASET_L1C_FEATURES if name != "B10"), "AOT", "WVP",
)
"""The 14 L2A layers: the 12 surface-reflectance bands (no B10), aerosol optical thickness and
water vapour."""

KAPPASET_LABELS: dict[int, str] = {
    0: "MISSING",
    1: "CLEAR",
    2: "CLOUD_SHADOW",
    3: "SEMI_TRANSPARENT_CLOUD",
    4: "CLOUD",
    5: "UNDEFINED",
}
"""Label values and their names."""

MISSING = 0
UNDEFINED = 5
"""Label of pixels the annotators left undecided: ignored in training and in metrics."""

COMPARISON_MASKS: tuple[str, ...] = ("FMC", "SS2C", "MAJAC")
"""Masks of other processors stored in some tiles: Fmask, s2cloudless and MAJA."""

TILE_SIZE = 512
DN_THRESHOLD = 2.0
CM_VSM_SCALE = 65535 / 10000
"""Factor from cm-vsm's stored band values (DN / 65535) to reflectance (DN / 10000)."""

LABEL = "Label"
_AUXILIARY = frozenset({"AOT", "WVP"})
_AUXILIARY_FACTOR = 10.0  # AOT/WVP are DN / 1000 in xcloud.load's units, the bands DN / 10000
_FEATURES = {"L1C": KAPPASET_L1C_FEATURES, "L2A": KAPPASET_L2A_FEATURES}
_TILE_FILE = re.compile(r"(?:^|_)tile_(\d+)_(\d+)\.nc$")
_TILE_DIR = re.compile(r"^tile_\d+_\d+$")
_LEVEL_IN_NAME = re.compile(r"MSIL(1C|2A)")
_ORDERS = ("xy", "yx")
_COMPRESSION = {"zlib": True, "complevel": 4, "shuffle": True}


# ---------------------------------------------------------------------------------------------
# Tiles on disk
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KappaSetTile:
    """One sub-tile file and where it belongs.

    Attributes
    ----------
    path
        The NetCDF file.
    product, month
        Names of the product folder and of the folder above it (the month).
    x, y
        The indices of ``tile_X_Y``: X counts columns, Y rows (see the module notes).
    level
        ``"L1C"`` or ``"L2A"`` from the product name or the file's variables; ``None`` if
        neither tells.
    """

    path: Path
    product: str
    month: str
    x: int
    y: int
    level: str | None = None

    def offset(self, tile_size: int = TILE_SIZE, *, order: str = "xy") -> tuple[int, int]:
        """Row and column of the tile's first pixel in its product."""
        row, col = (self.y, self.x) if _check_order(order) == "xy" else (self.x, self.y)
        return row * tile_size, col * tile_size


def find_tiles(root: PathLike, *, level: str | None = None) -> list[KappaSetTile]:
    """Find the ``tile_X_Y.nc`` files under ``root``, in a fixed order.

    Parameters
    ----------
    root
        The data set's root, a month folder or a product folder.
    level
        ``"L1C"`` or ``"L2A"`` to keep only tiles of that level (tiles whose level cannot be
        told are kept); ``None`` keeps all.

    Returns
    -------
    list of KappaSetTile
        Sorted by month, product, row and column.
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base} is not a folder; pass the root folder of the tiles")
    wanted = None if level is None else _check_level(level)
    tiles = [tile for tile in map(_tile_from_path, base.rglob("*.nc")) if tile is not None]
    if wanted is not None:
        tiles = [tile for tile in tiles if tile.level in (wanted, None)]
    return sorted(tiles, key=lambda t: (t.month, t.product, t.y, t.x, str(t.path)))


def _tile_from_path(path: Path) -> KappaSetTile | None:
    match = _TILE_FILE.search(path.name)
    if match is None:
        return None
    folder = path.parent
    while _TILE_DIR.match(folder.name):
        folder = folder.parent
    return KappaSetTile(path, folder.name, folder.parent.name, int(match[1]), int(match[2]),
                        _detect_level(path, folder.name))


def _detect_level(path: Path, product: str) -> str | None:
    match = _LEVEL_IN_NAME.search(product)
    if match:
        return f"L{match[1]}"
    with _open(path) as data:
        return _level_from_variables(set(map(str, data.data_vars)))


def _level_from_variables(names: set[str]) -> str | None:
    if names & _AUXILIARY:
        return "L2A"
    return "L1C" if "B10" in names else None


def _as_tiles(source: PathLike | Iterable[KappaSetTile | PathLike],
              level: str | None) -> list[KappaSetTile]:
    """Tiles of a folder (at least one), or the tiles and tile paths given (maybe none)."""
    if not isinstance(source, str | os.PathLike):
        return [item if isinstance(item, KappaSetTile) else _named_tile(Path(item))
                for item in source]
    tiles = find_tiles(source, level=level)
    if not tiles:
        of_level = "" if level is None else f" of level {level}"
        raise DatasetError(f"no KappaSet tiles (tile_X_Y.nc){of_level} under {source}")
    return tiles


def _named_tile(path: Path) -> KappaSetTile:
    tile = _tile_from_path(path)
    if tile is None:
        raise DatasetError(f"{path.name} is not a KappaSet tile: its name must end in "
                           "tile_X_Y.nc")
    return tile


# ---------------------------------------------------------------------------------------------
# Reading and writing one tile
# ---------------------------------------------------------------------------------------------


def _engine() -> Literal["netcdf4", "h5netcdf"]:
    """The xarray engine for NetCDF4: netCDF4 (3x faster here), else h5netcdf with h5py."""
    if _installed("netCDF4"):
        return "netcdf4"
    if _installed("h5netcdf") and _installed("h5py"):
        return "h5netcdf"
    raise OptionalDependencyError(
        "reading and writing KappaSet NetCDF files needs netCDF4, or h5netcdf with h5py; "
        "install them with: pip install 'xcloud[training]'"
    )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _open(path: Path) -> xr.Dataset:
    return xr.open_dataset(path, engine=_engine(), mask_and_scale=False, decode_times=False)


def read_tile(
    path: PathLike,
    *,
    level: str | None = None,
    features: Sequence[str] | None = None,
    scale: float | None = None,
    comparison: bool = True,
) -> xr.Dataset:
    """Read one sub-tile into memory (the file is closed on return).

    Parameters
    ----------
    path
        A ``tile_X_Y.nc`` file.
    level
        ``"L1C"`` or ``"L2A"``: which bands to read; ``None`` tells it from the variables.
    features
        The band variables to read instead of the level's (any subset, in this order).
    scale
        Multiply the spectral bands by this; ``None`` applies the digital-number rule of the
        module notes (values above 2: divided by 10000, with a warning).
    comparison
        Also read the comparison masks the file has (FMC, SS2C, MAJAC).

    Returns
    -------
    xarray.Dataset
        ``(y, x)`` variables: the bands (float32), ``Label`` (uint8) and the comparison masks
        found, as stored; attributes of the file plus ``source``, ``level`` and, when the
        bands were rescaled, ``rescaled``.

    Raises
    ------
    DatasetError
        Variables missing (all named), not 2-D, of different or non-square shapes, or labels
        outside 0..5.
    """
    source = Path(path)
    with _open(source) as raw:
        names = set(map(str, raw.data_vars))
        found_level = _check_level(level) if level is not None else _level_from_variables(names)
        wanted = _wanted_features(source, found_level, features)
        _check_present(source, names, wanted, found_level)
        masks = [name for name in COMPARISON_MASKS if comparison and name in names]
        arrays = {name: np.asarray(raw[name].values) for name in (*wanted, LABEL, *masks)}
        attrs = dict(raw.attrs)
    _check_shapes(source, arrays)
    label = _checked_label(source, arrays.pop(LABEL))
    bands = {name: arrays.pop(name).astype(np.float32, copy=False) for name in wanted}
    note = _rescale(source, bands, scale)
    variables = {**bands, LABEL: label, **arrays}
    attrs.update(source=str(source), level=found_level or "",
                 **({"rescaled": note} if note else {}))
    return xr.Dataset({name: (("y", "x"), value) for name, value in variables.items()},
                      attrs=attrs)


def _wanted_features(path: Path, level: str | None,
                     features: Sequence[str] | None) -> tuple[str, ...]:
    if features is not None:
        return tuple(features)
    if level is None:
        raise DatasetError(f"{path.name}: cannot tell L1C from L2A (neither B10 nor AOT/WVP); "
                           "pass level= or features=")
    return _FEATURES[level]


def _check_present(path: Path, names: set[str], wanted: Sequence[str],
                   level: str | None) -> None:
    missing = [name for name in (*wanted, LABEL) if name not in names]
    if not missing:
        return
    other = {"L1C": "L2A", "L2A": "L1C"}.get(level or "")
    hint = (f"; it looks like an {other} tile: pass level={other!r}"
            if other and _level_from_variables(names) == other else "")
    raise DatasetError(f"{path.name} lacks variable(s) {', '.join(missing)} "
                       f"(it has {', '.join(sorted(names)) or 'none'}){hint}")


def _check_shapes(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    shapes = {name: np.shape(value) for name, value in arrays.items()}
    listing = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
    if any(len(shape) != 2 for shape in shapes.values()):
        raise DatasetError(f"{path.name}: every variable must be 2-D; got {listing}")
    if len(set(shapes.values())) > 1:
        raise DatasetError(f"{path.name}: the variables differ in shape: {listing}")
    rows, cols = next(iter(shapes.values()))
    if rows != cols:
        raise DatasetError(f"{path.name}: sub-tiles are square; got {rows} x {cols}")


def _checked_label(path: Path, label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise DatasetError(f"{path.name}: Label holds non-integer values (or NaN); it must "
                           "hold class codes 0..5")
    if label.dtype.kind not in "fiu":
        raise DatasetError(f"{path.name}: Label has dtype {label.dtype}; it must hold class "
                           "codes 0..5")
    unknown = np.setdiff1d(np.unique(label), np.array(list(KAPPASET_LABELS)))
    if unknown.size:
        legend = ", ".join(f"{value} {name}" for value, name in KAPPASET_LABELS.items())
        raise DatasetError(f"{path.name}: Label holds value(s) "
                           f"{', '.join(str(v) for v in unknown[:10].tolist())} outside "
                           f"0..5 ({legend})")
    return label.astype(np.uint8)


def _rescale(path: Path, bands: dict[str, np.ndarray], scale: float | None) -> str | None:
    spectral = [name for name in bands if name not in _AUXILIARY]
    auxiliary = [name for name in bands if name in _AUXILIARY]
    if scale is not None:
        for name in spectral:
            bands[name] = bands[name] * np.float32(scale)
        for name in auxiliary:  # stored like the spectral bands; xcloud's unit is DN / 1000
            bands[name] = bands[name] * np.float32(scale * _AUXILIARY_FACTOR)
        return f"spectral bands multiplied by {scale:g}, AOT/WVP by {scale * 10:g} (scale=)"
    peak = max((float(np.max(bands[n], where=np.isfinite(bands[n]), initial=-np.inf))
                for n in spectral), default=-np.inf)
    if peak <= DN_THRESHOLD:
        return None
    for name in spectral:
        bands[name] = bands[name] / np.float32(10000)
    note = (f"spectral bands divided by 10000: values up to {peak:g} look like digital "
            f"numbers (above {DN_THRESHOLD:g})")
    warnings.warn(f"{path.name}: {note}; pass scale= to choose the factor", XcloudWarning,
                  stacklevel=3)
    return note


def write_tile(
    path: PathLike,
    features: Mapping[str, np.ndarray],
    label: np.ndarray,
    *,
    comparison: Mapping[str, np.ndarray] | None = None,
    product: str | None = None,
) -> Path:
    """Write one sub-tile in the published layout.

    Parameters
    ----------
    path
        The file to write (``.../<month>/<product>/tile_X_Y.nc``); folders are created.
    features
        Band name (of :data:`KAPPASET_L1C_FEATURES` or :data:`KAPPASET_L2A_FEATURES`) to a
        2-D array, row first; stored as float32.
    label
        2-D class codes 0..5; stored as uint8.
    comparison
        Optional masks named FMC, SS2C or MAJAC; stored as uint8.
    product
        Stored as the ``product_name`` attribute, as cm-vsm does.

    Returns
    -------
    pathlib.Path
        The file written: NetCDF4, compressed, every variable on the dimensions ``("x", "y")``
        as in the published files (row first, see the module notes).
    """
    target = Path(path)
    variables = {name: _feature_array(name, values) for name, values in features.items()}
    variables[LABEL] = _checked_label(target, np.asarray(label))
    for name, mask in (comparison or {}).items():
        if name not in COMPARISON_MASKS:
            raise DatasetError(f"comparison masks are {', '.join(COMPARISON_MASKS)}; got "
                               f"{name!r}")
        variables[name] = np.asarray(mask).astype(np.uint8)
    _check_shapes(target, variables)
    attrs: dict[str, Any] = {"overlap": 0.0}
    if product is not None:
        attrs["product_name"] = product
    data = xr.Dataset({n: (("x", "y"), v) for n, v in variables.items()}, attrs=attrs)
    target.parent.mkdir(parents=True, exist_ok=True)
    data.to_netcdf(target, engine=_engine(), format="NETCDF4",
                   encoding={name: dict(_COMPRESSION) for name in variables})
    return target


def _feature_array(name: str, values: np.ndarray) -> np.ndarray:
    if name not in _FEATURES["L1C"] and name not in _FEATURES["L2A"]:
        raise DatasetError(f"{name!r} is not a KappaSet feature; they are "
                           f"{', '.join(dict.fromkeys(_FEATURES['L1C'] + _FEATURES['L2A']))}")
    return np.asarray(values, dtype=np.float32)


def _check_level(level: str) -> str:
    key = str(level).upper()
    if key not in _FEATURES:
        raise DatasetError(f"level must be 'L1C' or 'L2A', got {level!r}")
    return key


def _check_order(order: str) -> str:
    if order not in _ORDERS:
        raise DatasetError(f"order must be 'xy' (tile_X_Y: X is the column) or 'yx', "
                           f"got {order!r}")
    return order


# ---------------------------------------------------------------------------------------------
# Samples for training
# ---------------------------------------------------------------------------------------------

Normalization = Callable[[np.ndarray], np.ndarray] | tuple[npt.ArrayLike, npt.ArrayLike]


class KappaSetDataset:
    """KappaSet tiles as ``(image, label)`` samples, for ``torch.utils.data.DataLoader``.

    A map-style data set (``len`` and indexing) that needs no torch unless ``as_tensor``.

    Parameters
    ----------
    root_or_tiles
        A folder searched with :func:`find_tiles`, or tiles / tile paths.
    level
        ``"L1C"`` (13 channels) or ``"L2A"`` (14); tiles of the other level are skipped.
    features
        Channels to read instead of the level's, in this order.
    normalization
        ``None`` (values as read), ``(minimum, maximum)`` per channel (``(x - min) / (max -
        min)``), ``"minmax"`` (the 1st and 99th percentiles per channel of valid pixels of up
        to 32 tiles of this data set, computed once) or a callable on the ``(C, H, W)`` image.
    with_comparison
        Add a third item: a dict of the comparison masks the tile has (only those, so batch
        them with ``batch_size=1`` or a collate function of your own).
    transform
        ``transform(image, label) -> (image, label)`` on numpy arrays after normalisation and
        augmentation.
    augment, seed
        Random flips and quarter turns (the 8 symmetries of the square), the same for image,
        label and masks, drawn from a generator seeded with ``seed`` (in a DataLoader worker,
        with ``seed`` and the worker's seed).
    as_tensor
        Return torch tensors instead of numpy arrays.
    scale
        Passed to :func:`read_tile`.

    Notes
    -----
    A sample is ``image`` float32 ``(C, H, W)`` with NaN set to 0 after normalisation, and
    ``label`` int64 ``(H, W)`` with the codes of :data:`KAPPASET_LABELS` (5, UNDEFINED, is
    for the loss and the metrics to ignore).
    """

    def __init__(
        self,
        root_or_tiles: PathLike | Iterable[KappaSetTile | PathLike],
        *,
        level: str = "L1C",
        features: Sequence[str] | None = None,
        normalization: Normalization | str | None = None,
        with_comparison: bool = False,
        transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
        | None = None,
        augment: bool = False,
        seed: int = 0,
        as_tensor: bool = False,
        scale: float | None = None,
    ) -> None:
        self.level = _check_level(level)
        self.tiles: list[KappaSetTile] = _as_tiles(root_or_tiles, self.level)
        self.features: tuple[str, ...] = tuple(features or _FEATURES[self.level])
        self.scale = scale
        self.normalization = _resolve_normalization(normalization, self)
        self.with_comparison = with_comparison
        self.transform = transform
        self.augment = augment
        self.seed = seed
        self.as_tensor = as_tensor
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.tiles)

    def __repr__(self) -> str:
        return (f"KappaSetDataset({len(self)} tiles, {self.level}, {self.n_features} channels, "
                f"augment={self.augment})")

    @property
    def n_features(self) -> int:
        """Number of image channels."""
        return len(self.features)

    @property
    def normalization_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(minimum, maximum)`` applied; ``(0, 1)`` when there is none."""
        if self.normalization is None:
            return (np.zeros(self.n_features, np.float32), np.ones(self.n_features, np.float32))
        if callable(self.normalization):
            raise DatasetError("a callable normalization has no (minimum, maximum) range")
        return self.normalization

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        tile = self.tiles[index]
        data = read_tile(tile.path, level=self.level, features=self.features, scale=self.scale,
                         comparison=self.with_comparison)
        image = _normalize(np.stack([data[name].values for name in self.features]),
                           self.normalization)
        label = data[LABEL].values.astype(np.int64)
        masks = {name: data[name].values for name in COMPARISON_MASKS if name in data}
        if self.augment:
            image, label, masks = _augment(self._generator(), image, label, masks)
        if self.transform is not None:
            image, label = self.transform(image, label)
        sample = (image, label, masks) if self.with_comparison else (image, label)
        return _to_tensors(sample) if self.as_tensor else sample

    def split(self, fraction: float = 0.2, *, seed: int = 0,
              by: str = "tile") -> tuple[KappaSetDataset, KappaSetDataset]:
        """Random train/validation split (``fraction`` to validation), reproducible by ``seed``.

        ``by="tile"`` draws tiles; ``by="product"`` draws whole products, so that neighbouring
        tiles of one scene never sit on both sides. Both parts keep this data set's options
        (normalisation included); the validation part is not augmented.
        """
        if not 0 <= fraction < 1:
            raise DatasetError(f"fraction must be in [0, 1), got {fraction}")
        groups = self._groups(by)
        order = np.random.default_rng(seed).permutation(len(groups))
        n_val = round(len(groups) * fraction)
        val = sorted(i for g in order[:n_val] for i in groups[g])
        train = sorted(i for g in order[n_val:] for i in groups[g])
        return (self._derive([self.tiles[i] for i in train]),
                self._derive([self.tiles[i] for i in val], augment=False))

    def with_augmentation(self, *, seed: int = 0) -> KappaSetDataset:
        """The same tiles, randomly flipped and turned (see ``augment``)."""
        return self._derive(self.tiles, augment=True, seed=seed)

    def _groups(self, by: str) -> list[list[int]]:
        if by == "tile":
            return [[i] for i in range(len(self.tiles))]
        if by != "product":
            raise DatasetError(f"by must be 'tile' or 'product', got {by!r}")
        groups: dict[tuple[str, str], list[int]] = {}
        for i, tile in enumerate(self.tiles):
            groups.setdefault((tile.month, tile.product), []).append(i)
        return list(groups.values())

    def _derive(self, tiles: list[KappaSetTile], **changes: Any) -> KappaSetDataset:
        options = {"level": self.level, "features": self.features, "scale": self.scale,
                   "normalization": self.normalization, "with_comparison": self.with_comparison,
                   "transform": self.transform, "augment": self.augment, "seed": self.seed,
                   "as_tensor": self.as_tensor, **changes}
        return KappaSetDataset(tiles, **options)

    def _generator(self) -> np.random.Generator:
        worker = _torch_worker()
        if self._rng is None or self._rng_owner != worker:
            self._rng = np.random.default_rng([self.seed, *(worker or ())])
            self._rng_owner = worker
        return self._rng


def _torch_worker() -> tuple[int, int] | None:
    """``(id, seed)`` of the torch DataLoader worker this runs in, else ``None``."""
    torch = sys.modules.get("torch")
    info = None if torch is None else torch.utils.data.get_worker_info()
    return None if info is None else (int(info.id), int(info.seed))


def _resolve_normalization(normalization: Normalization | str | None,
                           dataset: KappaSetDataset) -> Any:
    if normalization is None or callable(normalization):
        return normalization
    if isinstance(normalization, str):
        if normalization != "minmax":
            raise DatasetError(f"normalization must be None, 'minmax', (minimum, maximum) or a "
                               f"callable, got {normalization!r}")
        return _minmax_range(dataset)
    low, high = (np.broadcast_to(np.asarray(v, np.float32), (dataset.n_features,)).copy()
                 for v in normalization)
    if np.any(high <= low):
        raise DatasetError("normalization maximum must exceed the minimum in every channel")
    return low, high


def _minmax_range(dataset: KappaSetDataset, *, max_tiles: int = 32,
                  percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[np.ndarray, ...]:
    if not dataset.tiles:
        raise DatasetError("normalization='minmax' needs tiles to take the range from")
    picks = np.random.default_rng(0).permutation(len(dataset.tiles))[:max_tiles]
    values = np.concatenate([_valid_pixels(dataset, dataset.tiles[i]) for i in sorted(picks)],
                            axis=1)
    if values.shape[1] == 0:
        raise DatasetError("no valid pixels to take the minimum and maximum from")
    low, high = np.percentile(values, percentiles, axis=1).astype(np.float32)
    return low, np.where(high > low, high, low + 1).astype(np.float32)


def _valid_pixels(dataset: KappaSetDataset, tile: KappaSetTile,
                  limit: int = 16384) -> np.ndarray:
    data = read_tile(tile.path, level=dataset.level, features=dataset.features,
                     scale=dataset.scale, comparison=False)
    image = np.stack([data[name].values.ravel() for name in dataset.features])
    keep = (data[LABEL].values.ravel() != MISSING) & np.isfinite(image).all(axis=0)
    pixels = image[:, keep]
    return pixels[:, :: max(1, pixels.shape[1] // limit)]


def _normalize(image: np.ndarray, normalization: Any) -> np.ndarray:
    if callable(normalization):
        image = np.asarray(normalization(image), dtype=np.float32)
    elif normalization is not None:
        low, high = normalization
        image = (image - low[:, None, None]) / (high - low)[:, None, None]
    return np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def _augment(rng: np.random.Generator, image: np.ndarray, label: np.ndarray,
             masks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))

    def move(array: np.ndarray) -> np.ndarray:
        turned = np.rot90(array, turns, axes=(-2, -1))
        return np.ascontiguousarray(turned[..., ::-1] if flip else turned)

    return move(image), move(label), {name: move(mask) for name, mask in masks.items()}


def _to_tensors(sample: tuple[Any, ...]) -> tuple[Any, ...]:
    torch = import_optional("torch", extra="training")

    def tensor(value: Any) -> Any:
        if isinstance(value, dict):
            return {name: tensor(item) for name, item in value.items()}
        return torch.from_numpy(np.ascontiguousarray(value))

    return tuple(tensor(item) for item in sample)


# ---------------------------------------------------------------------------------------------
# A product's tiles as one georeferenced mosaic
# ---------------------------------------------------------------------------------------------


def mosaic(
    tiles_or_product_dir: PathLike | Iterable[KappaSetTile | PathLike],
    *,
    transform: Any = None,
    crs: Any = None,
    tile_size: int | None = None,
    order: str = "xy",
    level: str | None = None,
    features: Sequence[str] | None = None,
    scale: float | None = None,
    flip_rows: bool = False,
) -> xr.Dataset:
    """Assemble one product's sub-tiles into a single ``(y, x)`` Dataset.

    Tile ``tile_X_Y`` goes to rows ``Y * tile_size`` and columns ``X * tile_size`` (``order=
    "xy"``; ``"yx"`` swaps X and Y). The mosaic starts at the product's first pixel, tile 0_0,
    and reaches the last tile found; pixels of tiles not there are NaN in the bands, 0
    (MISSING) in ``Label`` and 255 in the comparison masks.

    Parameters
    ----------
    tiles_or_product_dir
        A product folder, or tiles / tile paths of one product.
    transform
        The product's 10 m grid as an ``affine.Affine`` or the 6 numbers ``(a, b, c, d, e,
        f)`` in that (rasterio/affine) order, not GDAL's: x = c + a * column, y = f + e * row.
        Sets ``x``/``y`` coordinates at pixel centres. North-up grids only.
    crs
        Anything pyproj understands (EPSG code, WKT...); needs ``transform``. Written with
        rioxarray when installed, else as a ``spatial_ref`` coordinate with ``crs_wkt`` and
        ``GeoTransform``.
    tile_size
        Pixels per sub-tile side; ``None`` takes it from the files (512 in KappaSet).
    level, features, scale
        Passed to :func:`read_tile` (the level defaults to the tiles').
    flip_rows
        Turn each sub-tile upside down first (files of cm-vsm versions that stored rows
        bottom-up).
    """
    tiles = _one_product(_as_tiles(tiles_or_product_dir, None))
    _check_order(order)
    if crs is not None and transform is None:
        raise DatasetError("crs needs transform: the pixel grid cannot be placed without it")
    corners = [tile.offset(1, order=order) for tile in tiles]
    grid = (1 + max(r for r, _ in corners), 1 + max(c for _, c in corners))
    canvas: dict[str, np.ndarray] = {}
    for tile in tiles:
        data = read_tile(tile.path, level=level or tile.level, features=features, scale=scale)
        tile_size = _tile_side(tile, data, tile_size)
        _paste(canvas, data, tile.offset(tile_size, order=order), grid, flip_rows)
    result = xr.Dataset({name: (("y", "x"), value) for name, value in canvas.items()},
                        attrs={"product": tiles[0].product, "month": tiles[0].month,
                               "tile_size": int(tile_size or 0), "tile_order": order})
    return result if transform is None else _georeference(result, transform, crs)


def _one_product(tiles: list[KappaSetTile]) -> list[KappaSetTile]:
    products = sorted({tile.product for tile in tiles})
    if len(products) > 1:
        raise DatasetError(f"mosaic assembles one product; these tiles come from "
                           f"{len(products)}: {', '.join(products[:3])}"
                           f"{', ...' if len(products) > 3 else ''}")
    return tiles


def _tile_side(tile: KappaSetTile, data: xr.Dataset, expected: int | None) -> int:
    side = int(data.sizes["y"])
    if expected is not None and side != expected:
        raise DatasetError(f"{tile.path.name} is {side} x {side} pixels, not {expected}: all "
                           "tiles of a mosaic have tile_size pixels a side")
    return side


def _paste(canvas: dict[str, np.ndarray], data: xr.Dataset, corner: tuple[int, int],
           grid: tuple[int, int], flip_rows: bool) -> None:
    side = int(data.sizes["y"])
    window = (slice(corner[0], corner[0] + side), slice(corner[1], corner[1] + side))
    for name, variable in data.data_vars.items():
        values = variable.values[::-1] if flip_rows else variable.values
        if name not in canvas:
            canvas[str(name)] = np.full((grid[0] * side, grid[1] * side),
                                        _fill_value(str(name), values.dtype), values.dtype)
        canvas[str(name)][window] = values


def _fill_value(name: str, dtype: np.dtype) -> float | int:
    if np.issubdtype(dtype, np.floating):
        return np.nan
    return MISSING if name == LABEL else 255


def _georeference(data: xr.Dataset, transform: Any, crs: Any) -> xr.Dataset:
    a, b, c, d, e, f = terms = _affine_terms(transform)
    if b or d:
        raise DatasetError("the transform is rotated or sheared; mosaic supports north-up "
                           "grids (b = d = 0) only")
    data = data.assign_coords(x=c + a * (np.arange(data.sizes["x"]) + 0.5),
                              y=f + e * (np.arange(data.sizes["y"]) + 0.5))
    if crs is None:
        return data
    try:
        import rioxarray  # noqa: F401
        from affine import Affine
    except ImportError:
        return _with_spatial_ref(data, crs, terms)
    return data.rio.write_crs(crs).rio.write_transform(Affine(*terms))


def _affine_terms(transform: Any) -> tuple[float, ...]:
    terms = tuple(float(value) for value in tuple(transform)[:6])
    if len(terms) != 6:
        raise DatasetError("transform needs 6 numbers (a, b, c, d, e, f) or an affine.Affine")
    return terms


def _with_spatial_ref(data: xr.Dataset, crs: Any, terms: tuple[float, ...]) -> xr.Dataset:
    a, b, c, d, e, f = terms
    wkt = _crs_wkt(crs)
    geotransform = " ".join(repr(value) for value in (c, a, b, f, d, e))
    reference = xr.DataArray(0, attrs={"crs_wkt": wkt, "spatial_ref": wkt,
                                       "GeoTransform": geotransform})
    data = data.assign_coords(spatial_ref=reference)
    for variable in data.data_vars.values():
        variable.attrs["grid_mapping"] = "spatial_ref"
    return data


def _crs_wkt(crs: Any) -> str:
    if hasattr(crs, "to_wkt"):
        return str(crs.to_wkt())
    if isinstance(crs, str) and "[" in crs:
        return crs
    pyproj = import_optional("pyproj", extra="geo")
    return str(pyproj.CRS.from_user_input(crs).to_wkt())


# ---------------------------------------------------------------------------------------------
# Generated tiles with learnable structure
# ---------------------------------------------------------------------------------------------

_MGRS_TILES = ("T35VNE", "T35VLF", "T34VFM", "T33UVP", "T32UNU", "T31UFU")
_SPECTRAL_NAMES = [band.name for band in SPECTRAL_BANDS]


def synthetic_kappaset(
    root: PathLike,
    *,
    n_products: int = 2,
    tiles_per_product: int = 4,
    level: str = "L1C",
    size: int = 64,
    seed: int = 0,
) -> list[Path]:
    """Write generated tiles in the KappaSet layout, for tests, demos and training smoke runs.

    Each product is one generated scene (the ideas of :mod:`xcloud.synthetic`) cut into
    ``tiles_per_product`` sub-tiles of ``size`` pixels, written row by row as
    ``<root>/2020_MM/<product>/tile_X_Y.nc`` with a realistic product name. The labels come
    from the masks that made the image, so a small network can learn them: smooth vegetation
    and soil (CLEAR), bright flat thick clouds (CLOUD) whose rims are UNDEFINED, thin clouds
    blended over the surface (SEMI_TRANSPARENT_CLOUD), darker surface beside the clouds
    (CLOUD_SHADOW) and a corner without data (MISSING: features 0 in even-numbered products,
    NaN in odd ones). Values are reflectances.

    Returns
    -------
    list of pathlib.Path
        The files written, sorted.
    """
    level = _check_level(level)
    if size < 16 or n_products < 1 or tiles_per_product < 1:
        raise DatasetError("synthetic_kappaset needs size >= 16 and at least one product and "
                           "one tile per product")
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for index in range(n_products):
        month, product = _product_name(rng, level, index)
        fill = np.nan if index % 2 else 0.0
        paths += _write_product(Path(root) / month / product, rng, level=level, size=size,
                                count=tiles_per_product, fill=fill)
    return sorted(paths)


def _product_name(rng: np.random.Generator, level: str, index: int) -> tuple[str, str]:
    month = 4 + index % 6
    date = f"2020{month:02d}{int(rng.integers(1, 29)):02d}"

    def clock(first_hour: int) -> str:
        hour, minute, second = first_hour + int(rng.integers(2)), *rng.integers(60, size=2)
        return f"{hour:02d}{minute:02d}{second:02d}"

    name = (f"{'S2A' if index % 2 == 0 else 'S2B'}_MSI{level}_{date}T{clock(9)}_"
            f"{'N0209' if level == 'L1C' else 'N0214'}_R{int(rng.integers(1, 144)):03d}_"
            f"{_MGRS_TILES[index % len(_MGRS_TILES)]}_{date}T{clock(11)}")
    return f"2020_{month:02d}", name


def _write_product(folder: Path, rng: np.random.Generator, *, level: str, size: int,
                   count: int, fill: float) -> list[Path]:
    grid = math.ceil(math.sqrt(count))
    bands, label = _synthetic_scene(rng, grid * size, level, fill)
    paths = []
    for k in range(count):
        row, col = divmod(k, grid)
        window = (slice(row * size, (row + 1) * size), slice(col * size, (col + 1) * size))
        paths.append(write_tile(folder / f"tile_{col}_{row}.nc",
                                {name: band[window] for name, band in bands.items()},
                                label[window], product=folder.name))
    return paths


def synthetic_masks(rng: np.random.Generator, side: int) -> dict[str, np.ndarray]:
    """Random class layers of a ``side`` x ``side`` synthetic tile: soil fraction, thick and thin
    cloud, shadow and their texture (the layers :func:`synthetic_kappaset` draws from)."""
    soil = 1 / (1 + np.exp(-2 * smooth_field(rng, side, side / 16)))
    thick_field = smooth_field(rng, side, side / 12)
    cut = np.quantile(thick_field, 0.78)
    thick = thick_field > cut
    thin_field = smooth_field(rng, side, side / 10)
    thin = (thin_field > np.quantile(thin_field, 0.8)) & ~thick
    shift = max(2, side // 16)
    rows, cols = np.indices((side, side))
    return {
        "soil": soil,
        "thick": thick,
        "texture": 0.92 + 0.08 * np.tanh(thick_field - cut),
        "rim": thick & (thick_field < cut + 0.12),
        "thin": thin,
        "alpha": 0.3 + 0.25 / (1 + np.exp(-thin_field)),
        "shadow": np.roll(thick, (shift, shift), axis=(0, 1)) & ~thick & ~thin,
        "missing": rows + cols < 0.3 * side,
    }


def _synthetic_band(masks: dict[str, np.ndarray], name: str,
                    rng: np.random.Generator) -> np.ndarray:
    index = _SPECTRAL_NAMES.index(name)
    soil = masks["soil"]
    surface = (1 - soil) * SPECTRA["vegetation"][index] + soil * SPECTRA["soil"][index]
    surface = np.where(masks["shadow"], 0.4 * surface, surface)
    cloud = SPECTRA["cloud"][index]
    alpha = masks["alpha"]
    value = np.where(masks["thin"], (1 - alpha) * surface + alpha * cloud, surface)
    value = np.where(masks["thick"], cloud * masks["texture"], value)
    return value + rng.normal(0, 0.003, value.shape)


def _synthetic_scene(rng: np.random.Generator, side: int, level: str,
                     fill: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    masks = synthetic_masks(rng, side)
    bands = {name: _synthetic_band(masks, name, rng)
             for name in _FEATURES[level] if name not in _AUXILIARY}
    if level == "L2A":
        bands["AOT"] = 0.15 + 0.03 * smooth_field(rng, side, side / 8)
        bands["WVP"] = 1.5 + 0.2 * smooth_field(rng, side, side / 8)
    for band in bands.values():
        band[masks["missing"]] = fill
    label = np.full((side, side), 1, np.uint8)
    for name, value in (("shadow", 2), ("thin", 3), ("thick", 4), ("rim", UNDEFINED),
                        ("missing", MISSING)):
        label[masks[name]] = value
    return {name: bands[name] for name in _FEATURES[level]}, label
