"""Write masks to Zarr chunk by chunk: resumable, appendable along time, with multiscales.

The store is a local folder or a prefix in any object store fsspec reaches (``s3://``,
``gs://``, ``az://``, ``memory://``, ``file://``), opened with ``storage_options``::

    mask.zarr/
        cloudmask, time, y, x, spatial_ref   the mask as given (level 0, root group)
        r20m/, r60m/                         optional coarser levels (child groups)
        .xcloud/                             write state, while a write is unfinished
            lease.json                       the lease of the job writing (see below)
            template-<group>.json            a template being written
            append-<group>.json              arrays being grown along time
            done/<group>/<variable>/<i.j.k>  chunk markers (empty objects)
            failures/<uuid>.json             read-failure reports of chunk tasks

Zarr readers ignore ``.xcloud/`` (it holds no Zarr metadata). No step relies on a rename or
on a listing seeing what another process writes at that moment: every piece of state is an
object of its own, written whole (one PUT; on a local disk, a file renamed into place).

How a write goes:

0. **Lease.** The job takes the store's lease (:mod:`xcloud.outputs.lease`): a second job
   writing the same store is refused with :class:`~xcloud.outputs.lease.StoreLockedError`
   until the first ends or its lease expires (a crashed job's lease is taken over then; one
   of a dead process of this host at once). The lease is renewed while the job runs.
1. **Template.** ``template-<group>.json`` is written, then the whole structure (coordinates,
   ``spatial_ref``, attributes, empty data arrays whose chunks are the Dask chunks) with
   xarray's ``compute=False``, then ``template-<group>.json`` is deleted: a template whose
   marker is still there is unfinished, and the next run clears the group and writes it again.
2. **Chunks.** One Dask task per output chunk computes that block of the mask, writes it into
   its region of the Zarr array, then writes its (empty) marker
   ``.xcloud/done/<group>/<variable>/<i>.<j>.<k>`` (``_root`` for level 0's group).
   Tasks are made only for chunks without a marker, and the graph is culled to them, so the
   inputs of finished chunks are never computed. Peak memory is about one chunk (plus the
   halo the mask borrows) per worker thread. The markers are listed once when a write starts
   (under the lease, so no other job writes them then); a marker a listing missed only makes
   its chunk be written again, never skipped, since a marker is written after its chunk.
3. **Finish.** ``xcloud:complete`` is set on the root group, metadata is consolidated, the
   write state is deleted and the lease given back.

Assets that could not be read (``xcloud.load(..., strict=False)``, the default) leave no data
in the mask and a record in the process that read them. Each chunk task saves the records of
its process to ``.xcloud/failures/`` before it marks its chunk done; at the end they
are merged (with those of distributed workers still held) into the root attribute
``xcloud:read_failures``: ``{"count": failed reads (one per band, item and chunk), "items":
[item ids], "assets": ["<item id>:<band>"]}``, added to what earlier writes recorded, and
``ZarrWriteSummary.read_failures`` counts them.

A write killed at any point (SIGKILL included) and run again finishes the chunks without a
marker and nothing else; a chunk written but not marked is written again. Markers make a
write safe against the process dying, not against the machine losing power (no fsync).
A chunk, marker or report that cannot be written after the store client's own retries (for
S3, botocore's: set them with ``storage_options={"config_kwargs": {"retries": ...}}``) stops
the write with :class:`~xcloud.outputs.store.StoreWriteError` naming the object; nothing is
marked done that was not written.

Running the same call on a complete store does nothing. A mask whose ``time`` values are not
all in the store is appended along ``time``: only the new time steps are computed, in the
order they come (the store's ``time`` is *not* re-sorted), and time steps already there are
skipped, not overwritten. An unfinished write is finished from the matching time steps of the
mask given (it must have all of them, on the same grid, with the same model and attributes,
or :class:`~xcloud.errors.ZarrStoreError` is raised), then its other time steps are appended.

Multiscale levels follow the same rules. They are computed from level 0 as read back from
the store (never by running the model again) with the kernels of :mod:`xcloud.data.resample`
(majority vote of classes, mean of probabilities; a partial block at the bottom/right edge
uses the pixels present), have coordinates at the coarse pixel centres, the same attributes
and a ``spatial_ref`` with the coarse ``GeoTransform``, and are listed in the root group's
``multiscales`` attribute (`zarr-conventions/multiscales
<https://github.com/zarr-conventions/multiscales>`_; level 0 is the root group itself, asset
``"."``). xarray's DataTree cannot open such a store (child groups must align with their
parent); open a level with ``xr.open_zarr(store, group="r20m")``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import uuid
import warnings
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from xarray.backends.zarr import ZarrStore

from .._optional import import_optional
from ..data.load import SOURCE_ITEMS_ATTR, ReadFailure, take_read_failures
from ..engine.attributes import MASK_VARIABLE, MASK_VARIABLE_NAMES
from ..engine.batches import compute_in_batches
from ..errors import StoreWriteError, ZarrStoreError
from .lease import DEFAULT_LEASE_TTL, Lease, hold_lease
from .store import StoreLocation, store_location

__all__ = ["APPEND_DIM", "STATE_PREFIX", "ZarrWriteSummary", "grid_transform", "open_mask",
           "to_zarr"]

APPEND_DIM = "time"
"""The dimension new scenes are appended along (chunks of 1 in the store)."""

GRID_ATTR = "xcloud:grid"
PENDING_ATTR = "xcloud:pending"
COMPLETE_ATTR = "xcloud:complete"
READ_FAILURES_ATTR = "xcloud:read_failures"
FACTOR_ATTR = "xcloud:factor"
STATE_PREFIX = ".xcloud"
"""The prefix inside a store that holds its write state and lease (no Zarr node)."""
_ROOT_KEY = "_root"
_KEEP_STATE = ("lease",)  # state names kept while the lease is held (lease, takeover claims)
_DEFAULT_CHUNK = 2048
_SPATIAL = ("y", "x")
_VOLATILE_ATTRS = ("xcloud_version", SOURCE_ITEMS_ATTR)
_TIME_ENCODING = {"units": "nanoseconds since 1970-01-01", "calendar": "proleptic_gregorian",
                  "dtype": "int64"}
_RESAMPLING_NAMES = {"majority": "mode", "mean": "average"}  # multiscales convention's words
_MULTISCALES_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/"
                  "schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}


@dataclass(frozen=True)
class ZarrWriteSummary:
    """What one :func:`to_zarr` call did.

    Attributes
    ----------
    path
        The store: its absolute path if local, else its URL.
    chunks_written
        Chunks computed and written by this call (all groups).
    chunks_skipped
        Chunks that an interrupted earlier call had finished.
    times_appended
        Time steps of level 0 written or finished by this call (1 for a mask without time).
    levels
        Names of the store's multiscale groups, finest first.
    read_failures
        Asset reads that failed and were marked no data while this call (or the interrupted
        call it finished) computed the mask; details in the store's ``xcloud:read_failures``.
    """

    path: Path | str
    chunks_written: int
    chunks_skipped: int
    times_appended: int
    levels: tuple[str, ...]
    read_failures: int = 0


@dataclass(frozen=True)
class _Writer:
    location: StoreLocation
    store: Any  # what zarr/xarray open: a local path or a zarr FsspecStore
    zarr_format: int
    scheduler: Any
    progress: bool
    lease: Lease | None = None

    def target(self, group: str) -> str:
        """The group's URL or path, for messages."""
        return self.location.child(group).url

    def markers(self, group: str) -> str:
        """Prefix of the chunk markers of ``group`` (one sub-prefix per variable)."""
        return f"{STATE_PREFIX}/done/{group or _ROOT_KEY}"

    @property
    def failures(self) -> str:
        """Prefix of the read-failure reports that chunk tasks save."""
        return f"{STATE_PREFIX}/failures"


@dataclass(frozen=True)
class _GroupResult:
    changed: bool
    written: int = 0
    skipped: int = 0
    appended: int = 0

    def __add__(self, other: _GroupResult) -> _GroupResult:
        return _GroupResult(self.changed or other.changed, self.written + other.written,
                            self.skipped + other.skipped, self.appended + other.appended)


@dataclass(frozen=True)
class _ChunkTarget:
    store: StoreLocation
    array: str
    zarr_format: int
    region: tuple[slice, ...]
    marker: str
    failures: str


def to_zarr(
    mask: xr.DataArray | xr.Dataset,
    store: str | os.PathLike[str],
    *,
    multiscales: Sequence[int] = (),
    consolidated: bool = True,
    zarr_format: int | None = None,
    overwrite: bool = False,
    scheduler: Any = None,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    lease_ttl: float = DEFAULT_LEASE_TTL,
) -> ZarrWriteSummary:
    """Write a (lazy) mask to a Zarr store chunk by chunk, resumably.

    Parameters
    ----------
    mask
        A mask or probabilities from :func:`xcloud.predict` (or a Dataset of them), Dask-backed
        or in memory; dims ``(time, y, x)``, ``(y, x)`` or with a ``class`` dim. A scalar
        ``time`` coordinate becomes a ``time`` dim of length 1 so later scenes can be
        appended. The attribute ``source_items`` (STAC item ids) goes to the root group's
        attributes, merged with those already there.
    store
        A local directory (created if missing), a ``file://`` URL, or the URL of a store in
        any object store fsspec reaches: ``s3://bucket/masks.zarr``, ``gs://``, ``az://``,
        ``memory://``. Its write state and lease are objects under ``.xcloud/`` in it.
    multiscales
        Integer downsampling factors of extra levels, e.g. ``(2, 6)`` for 20 m and 60 m
        levels of a 10 m mask, stored as groups ``r20m`` and ``r60m`` (``x<factor>`` when the
        CRS is not in metres). Levels already in the store are always kept up to date (new
        time steps reach them too).
    consolidated
        Consolidate the metadata at the end. A store that already has consolidated metadata
        is consolidated again whatever this says, so it never goes stale.
    zarr_format
        2 or 3 for a new store (default 3); an existing store keeps its format.
    overwrite
        Delete an existing store first (only a Zarr store or an empty folder is deleted).
    scheduler
        Dask scheduler for the chunk tasks (default: the current one, e.g. a distributed
        client).
    progress
        Show Dask's progress bar (local schedulers).
    storage_options
        Options of the store's fsspec file system, e.g. for S3 ``endpoint_url``, ``key``,
        ``secret``, ``anon``, ``requester_pays``, ``config_kwargs`` (botocore's retries and
        timeouts). They travel with each chunk task to the workers.
    lease_ttl
        Seconds the store's lease lasts without renewal (renewed every third of it): how long
        a crashed job on another host blocks the store. Keep it well above the time one batch
        of chunks takes.

    Returns
    -------
    ZarrWriteSummary
        Chunks written and skipped, time steps appended, multiscale levels.

    Raises
    ------
    ZarrStoreError
        The store holds other data (another grid or model, an unfinished write of another
        mask), is not an xcloud store, has another Zarr format, or ``storage_options`` were
        given for a local path.
    StoreLockedError
        Another job is writing the store (its lease has not expired); a subclass of
        ``ZarrStoreError`` naming the store, the holder and the expiry.
    StoreWriteError
        An object of the store could not be written after the client's retries (names it).
    """
    location = store_location(store, storage_options)
    factors = _check_factors(multiscales)
    if zarr_format not in (None, 2, 3):
        raise ValueError(f"zarr_format must be 2, 3 or None, got {zarr_format!r}")
    dataset, sources = _prepare(mask)
    _check_target(location, overwrite=overwrite)
    with hold_lease(location, lease_ttl) as lease, _quiet_consolidation_warning():
        if overwrite:
            _remove_store(location)
        writer = _Writer(location, location.zarr_store(), _store_format(location, zarr_format),
                         scheduler, progress, lease)
        dataset = _named_like_store(writer, dataset)
        base = _write_group(writer, "", dataset, sources=sources)
        levels = _write_levels(writer, factors)
        results = [base, *(result for _, result in levels)]
        failed = 0
        if any(r.changed for r in results) or _unfinished(writer):
            failed = _finish(writer, [name for name, _ in levels], consolidated=consolidated)
    return ZarrWriteSummary(
        path=Path(location.url) if location.local else location.url,
        chunks_written=sum(r.written for r in results),
        chunks_skipped=sum(r.skipped for r in results),
        times_appended=base.appended,
        levels=tuple(name for name, _ in levels),
        read_failures=failed,
    )


# -- preparing the mask ---------------------------------------------------------------------


def open_mask(
    store: str | os.PathLike[str],
    *,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    consolidated: bool | None = None,
) -> xr.Dataset:
    """Open a store written by `to_zarr` lazily, with its masks as written.

    Both formats read alike: masks keep their integer classes and their no-data value (the
    arrays' fill value). ``xr.open_zarr`` decodes a format 2 array's fill value as CF's
    ``_FillValue``, so that masks of a format 2 store come back as floats with NaN where
    there is no data (format 3 keeps the fill value apart; xarray 2026.9 ignores
    ``use_zarr_fill_value_as_mask=False`` in ``open_zarr``).

    Parameters
    ----------
    store
        The store's path or URL (``s3://``, ``gs://``, ...).
    group
        A level of a multiscale store (``"r20m"``); None for the full resolution.
    storage_options
        Options of the object store's fsspec file system (URLs only).
    consolidated
        Whether to read the consolidated metadata (None: where there is some).

    Returns
    -------
    xarray.Dataset
        The store's variables as Dask arrays in the store's chunks, CRS as ``spatial_ref``.
    """
    location = store_location(store, storage_options)
    opened = ZarrStore.open_group(location.zarr_store(), group=group, mode="r",
                                  consolidated=consolidated, use_zarr_fill_value_as_mask=False)
    return xr.open_dataset(opened, chunks={}, decode_coords="all")


def _check_factors(factors: Sequence[int]) -> tuple[int, ...]:
    for factor in factors:
        if isinstance(factor, bool) or int(factor) != factor or factor < 2:
            raise ValueError(f"multiscales must be integer factors >= 2, got {tuple(factors)}")
    return tuple(sorted({int(f) for f in factors}))


def _prepare(mask: xr.DataArray | xr.Dataset) -> tuple[xr.Dataset, list[str]]:
    if isinstance(mask, xr.DataArray):
        mask = mask.to_dataset(name=mask.name or MASK_VARIABLE, promote_attrs=False)
    dataset = mask.copy()  # new attribute dicts: the caller's stay as they are
    sources = _merge_ids(dataset.attrs.get(SOURCE_ITEMS_ATTR, ()),
                         *(v.attrs.get(SOURCE_ITEMS_ATTR, ()) for v in dataset.data_vars.values()))
    dataset.attrs.pop(SOURCE_ITEMS_ATTR, None)
    for variable in dataset.data_vars.values():
        variable.attrs.pop(SOURCE_ITEMS_ATTR, None)
    if APPEND_DIM in dataset.coords and dataset[APPEND_DIM].ndim == 0:
        dataset = dataset.expand_dims(APPEND_DIM)
    if APPEND_DIM in dataset.coords and dataset[APPEND_DIM].dtype.kind == "M":
        times = dataset[APPEND_DIM].values.astype("datetime64[ns]")  # one unit, so appends match
        dataset = dataset.assign_coords({APPEND_DIM: (dataset[APPEND_DIM].dims, times,
                                                      dataset[APPEND_DIM].attrs)})
    if APPEND_DIM in dataset.indexes and not dataset.indexes[APPEND_DIM].is_unique:
        raise ValueError(f"the mask's {APPEND_DIM!r} values are not unique")
    lazy_coords = {k: v.compute() for k, v in dataset.coords.items() if v.chunks is not None}
    dataset = dataset.assign_coords(lazy_coords)
    for name, variable in dataset.data_vars.items():
        dataset[name] = variable.chunk(_uniform_chunks(variable))
    return dataset, sources


def _merge_ids(*groups: Iterable[str] | str) -> list[str]:
    merged: dict[str, None] = {}
    for group in groups:
        ids = [group] if isinstance(group, str) else list(group)
        merged.update((str(i), None) for i in ids)
    return list(merged)


def _uniform_chunks(variable: xr.DataArray) -> dict[Hashable, int]:
    """One chunk size per dim: time 1, regular Dask chunks kept, irregular ones made regular."""
    chunks: dict[Hashable, int] = {}
    for axis, dim in enumerate(variable.dims):
        if dim == APPEND_DIM:
            chunks[dim] = 1
        elif variable.chunks is None:
            chunks[dim] = min(variable.shape[axis], _DEFAULT_CHUNK) if dim in _SPATIAL \
                else variable.shape[axis]
        else:
            sizes = variable.chunks[axis]
            regular = len(set(sizes[:-1])) <= 1 and sizes[-1] <= sizes[0]
            chunks[dim] = sizes[0] if regular else max(sizes)
    return chunks


# -- fingerprints ---------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()


def _values_digest(values: np.ndarray) -> str:
    values = np.asarray(values)
    if values.dtype.kind == "M":
        values = values.astype("datetime64[ns]")
    if values.dtype.kind in "OUS":
        return _digest(values.tolist())
    return _digest([values.dtype.str, values.shape,
                    hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()])


def _stable_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in _VOLATILE_ATTRS}


def _grid_key(dataset: xr.Dataset) -> str:
    """Everything but the time values: variables, dtypes, attrs, non-time coordinates."""
    return _digest({
        "vars": {name: [list(v.dims), v.dtype.str, _stable_attrs(v.attrs)]
                 for name, v in dataset.data_vars.items()},
        "coords": {name: [list(c.dims), c.attrs,
                          None if APPEND_DIM in c.dims else _values_digest(c.values)]
                   for name, c in dataset.coords.items()},
    })


def _fingerprint(dataset: xr.Dataset) -> str:
    """The grid key plus the values of every time-dependent coordinate."""
    return _digest([_grid_key(dataset),
                    {name: _values_digest(c.values) for name, c in dataset.coords.items()
                     if APPEND_DIM in c.dims}])


# -- store state ----------------------------------------------------------------------------


def _zarr() -> Any:
    return import_optional("zarr", extra="geo")


def _metadata(location: StoreLocation, group: str) -> tuple[int, dict[str, Any]] | None:
    """(format, metadata) of the Zarr group at ``group``, read by key; None if none."""
    prefix = f"{group}/" if group else ""
    raw = location.read(f"{prefix}zarr.json")
    if raw is not None:
        metadata = json.loads(raw)
        return (3, metadata) if metadata.get("node_type") == "group" else None
    raw = location.read(f"{prefix}.zgroup")
    return (2, json.loads(raw)) if raw is not None else None


def _is_group(location: StoreLocation, group: str = "") -> bool:
    return _metadata(location, group) is not None


def _others(location: StoreLocation, group: str = "") -> list[str]:
    """What is in the store (or group) besides xcloud's write state."""
    return [name for name in location.list(group) if name != STATE_PREFIX]


def _template_pending(location: StoreLocation, group: str) -> bool:
    return location.exists(_template_marker(group))


def _check_target(location: StoreLocation, *, overwrite: bool) -> None:
    """Refuse a store that holds other things before taking its lease (leaves no trace)."""
    if location.local and Path(location.url).exists() and not Path(location.url).is_dir():
        raise ZarrStoreError(f"{location} is a file, not a folder or a Zarr store")
    if _is_group(location) or _template_pending(location, "") or not _others(location):
        return
    if overwrite:
        raise ZarrStoreError(f"refusing to delete {location}: it is not a Zarr store")
    raise ZarrStoreError(f"{location} exists and is not an empty folder or a Zarr store; "
                         "choose another store or pass overwrite=True")


def _store_format(location: StoreLocation, requested: int | None) -> int:
    found = _metadata(location, "")
    if found is None:
        return requested or 3
    existing = found[0]
    if requested not in (None, existing):
        raise ZarrStoreError(
            f"{location} is a Zarr v{existing} store; pass zarr_format={existing} (or None) "
            f"to add to it, or overwrite=True to replace it with a v{requested} store"
        )
    return existing


def _clear_state(location: StoreLocation, *, keep_lease: bool = True) -> None:
    """Delete the write state (the lease and takeover claims stay while held)."""
    keep = tuple(n for n in location.list(STATE_PREFIX) if n.startswith(_KEEP_STATE)) \
        if keep_lease else ()
    location.delete_tree(STATE_PREFIX, keep=keep)


def _remove_store(location: StoreLocation) -> None:
    """Delete the store's content (checked by :func:`_check_target`); the lease stays."""
    location.delete_tree("", keep=(STATE_PREFIX,))
    _clear_state(location)


def _open(writer: _Writer, group: str, mode: str = "r+") -> Any:
    return _zarr().open_group(writer.store, path=group or None, mode=mode,
                              use_consolidated=False, zarr_format=writer.zarr_format)


def _group_attrs(writer: _Writer, group: str) -> dict[str, Any] | None:
    if not _is_group(writer.location, group):
        return None
    return dict(_open(writer, group, mode="r").attrs)


def _update_attrs(writer: _Writer, group: str, updates: Mapping[str, Any] | None = None,
                  remove: Sequence[str] = ()) -> None:
    node = _open(writer, group)
    attrs = {k: v for k, v in node.attrs.items() if k not in remove}
    node.attrs.put({**attrs, **dict(updates or {})})


def _named_like_store(writer: _Writer, dataset: xr.Dataset) -> xr.Dataset:
    """A mask appended to a store written before xcloud named its variable ``cloud_mask``
    (``cloudmask``, the accessor's name) keeps the store's name."""
    location = writer.location
    if (not _is_group(location) or _template_pending(location, "")
            or len(dataset.data_vars) != 1):  # an unfinished template is written again
        return dataset
    name = next(iter(dataset.data_vars))
    # a fresh listing of the store's own names (not through zarr, whose file system would
    # keep what it listed and miss the template being cleared and written again)
    present = set(location.list(""))
    stored = [n for n in MASK_VARIABLE_NAMES if n in present]
    if name in MASK_VARIABLE_NAMES and len(stored) == 1 and stored[0] != name:
        return dataset.rename({name: stored[0]})
    return dataset


def _read(writer: _Writer, group: str) -> xr.Dataset:
    opened = ZarrStore.open_group(writer.store, group=group or None, mode="r",
                                  consolidated=False, zarr_format=writer.zarr_format,
                                  use_zarr_fill_value_as_mask=False)
    return xr.open_dataset(opened, chunks={})


def _unfinished(writer: _Writer) -> bool:
    attrs = _group_attrs(writer, "") or {}
    state = [n for n in writer.location.list(STATE_PREFIX) if not n.startswith(_KEEP_STATE)]
    return bool(state) or not attrs.get(COMPLETE_ATTR, False)


def _check_lease(writer: _Writer) -> None:
    if writer.lease is not None:
        writer.lease.check()


# -- writing one group ----------------------------------------------------------------------


def _write_group(writer: _Writer, group: str, dataset: xr.Dataset, *,
                 sources: Sequence[str] = (), extra_attrs: Mapping[str, Any] | None = None
                 ) -> _GroupResult:
    """Bring ``group`` to hold ``dataset``: new store, or finish an unfinished write and append."""
    _check_lease(writer)
    _recover_append(writer, group)
    attrs = None if _template_pending(writer.location, group) else _group_attrs(writer, group)
    if attrs is None:
        return _write_new(writer, group, dataset, sources, extra_attrs or {})
    if GRID_ATTR not in attrs:
        raise ZarrStoreError(
            f"{writer.target(group)} is a Zarr group that xcloud did not write; choose another "
            "store or pass overwrite=True to replace it"
        )
    resumed = _GroupResult(False)
    if PENDING_ATTR in attrs:
        resumed = _resume(writer, group, dataset, attrs[PENDING_ATTR])
    elif attrs[GRID_ATTR] != _grid_key(dataset):
        raise ZarrStoreError(
            f"{writer.target(group)} holds a mask of another grid, model or variables; "
            "new scenes can only be appended when x, y, CRS, variables and model attributes "
            "are the same. Write to another store or pass overwrite=True."
        )
    return resumed + _append(writer, group, dataset, sources)


def _write_new(writer: _Writer, group: str, dataset: xr.Dataset, sources: Sequence[str],
               extra_attrs: Mapping[str, Any]) -> _GroupResult:
    if group:
        _update_attrs(writer, "", {COMPLETE_ATTR: False})
    attrs = {**dataset.attrs, **dict(extra_attrs), GRID_ATTR: _grid_key(dataset),
             PENDING_ATTR: {"fingerprint": _fingerprint(dataset), "time_start": 0}}
    if not group:
        attrs.update({COMPLETE_ATTR: False, SOURCE_ITEMS_ATTR: list(sources)})
    _write_template(writer, group, dataset, attrs)
    written, skipped = _write_chunks(writer, group, dataset, time_start=0)
    _finish_group(writer, group, resumed=False)
    return _GroupResult(True, written, skipped, _time_size(dataset))


def _resume(writer: _Writer, group: str, dataset: xr.Dataset,
            pending: Mapping[str, Any]) -> _GroupResult:
    """Finish the time steps ``time_start:`` of an unfinished write, taken from ``dataset``."""
    start = int(pending["time_start"])
    todo = _stored_part(writer, group, dataset, start)
    if todo is None or pending["fingerprint"] != _fingerprint(todo):
        raise ZarrStoreError(
            f"{writer.target(group)} has an unfinished write of a different mask (other "
            "shape, coordinates, times or model). Run that write again to finish it, or "
            "pass overwrite=True to start over."
        )
    todo = _rechunk_like_store(writer, group, todo)
    written, skipped = _write_chunks(writer, group, todo, time_start=start)
    _finish_group(writer, group, resumed=True)
    return _GroupResult(True, written, skipped, _time_size(todo))


def _append(writer: _Writer, group: str, dataset: xr.Dataset,
            sources: Sequence[str]) -> _GroupResult:
    """Add the time steps of ``dataset`` that the (complete) group does not have."""
    if APPEND_DIM not in dataset.dims:
        return _GroupResult(False)
    stored = _stored_times(writer, group)
    todo = dataset.isel({APPEND_DIM: np.flatnonzero(~np.isin(dataset[APPEND_DIM], stored))})
    if todo.sizes[APPEND_DIM] == 0:
        return _GroupResult(False)
    todo = _rechunk_like_store(writer, group, todo)
    attrs = _group_attrs(writer, group) or {}
    updates: dict[str, Any] = {
        PENDING_ATTR: {"fingerprint": _fingerprint(todo), "time_start": int(stored.size)}}
    if not group:
        updates.update({COMPLETE_ATTR: False,
                        SOURCE_ITEMS_ATTR: _merge_ids(attrs.get(SOURCE_ITEMS_ATTR, ()), sources)})
    _extend_template(writer, group, todo, attrs, updates)
    written, skipped = _write_chunks(writer, group, todo, time_start=int(stored.size))
    _finish_group(writer, group, resumed=False)
    return _GroupResult(True, written, skipped, _time_size(todo))


def _time_size(dataset: xr.Dataset) -> int:
    return int(dataset.sizes.get(APPEND_DIM, 1))


def _stored_times(writer: _Writer, group: str) -> np.ndarray:
    return _read(writer, group)[APPEND_DIM].values


def _stored_part(writer: _Writer, group: str, dataset: xr.Dataset,
                 start: int) -> xr.Dataset | None:
    """``dataset`` at the store's time steps ``start:`` (None if it lacks one of them)."""
    if APPEND_DIM not in dataset.dims:
        return dataset
    wanted = _stored_times(writer, group)[start:]
    positions = dataset.indexes[APPEND_DIM].get_indexer(wanted)
    return None if (positions < 0).any() else dataset.isel({APPEND_DIM: positions})


def _rechunk_like_store(writer: _Writer, group: str, dataset: xr.Dataset) -> xr.Dataset:
    node = _open(writer, group, mode="r")
    for name, variable in dataset.data_vars.items():
        dataset[name] = variable.chunk(dict(zip(variable.dims, node[name].chunks, strict=True)))
    return dataset


# -- templates ------------------------------------------------------------------------------


def _template(dataset: xr.Dataset, attrs: Mapping[str, Any],
              new_arrays_format: int | None = None) -> xr.Dataset:
    """``dataset`` with empty Dask arrays of the same chunks as data and no encodings;
    ``new_arrays_format``: the format of arrays it creates (None: it extends existing ones)."""
    data_vars = {name: (v.dims, da.empty(v.shape, dtype=v.dtype, chunks=v.data.chunks),
                        _template_attrs(v, new_arrays_format))
                 for name, v in dataset.data_vars.items()}
    coords = {name: xr.Variable(c.dims, _portable(c.values), c.attrs)
              for name, c in dataset.coords.items()}
    return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))


def _stored_fill_value(variable: xr.DataArray) -> int | None:
    """The no-data value of an integer mask, which unwritten chunks must read as."""
    nodata = variable.attrs.get("nodata")
    return int(nodata) if nodata is not None and variable.dtype.kind in "iu" else None


def _template_attrs(variable: xr.DataArray, zarr_format: int | None) -> dict[Hashable, Any]:
    """Format 2 has one fill value, set through ``_FillValue`` when the array is created
    (xarray moves it into the array's metadata); format 3 keeps the array's fill value apart
    (see ``_encoding``)."""
    attrs = dict(variable.attrs)
    fill_value = _stored_fill_value(variable)
    if zarr_format == 2 and fill_value is not None:
        attrs["_FillValue"] = fill_value
    return attrs


def _portable(values: np.ndarray) -> np.ndarray:
    """Fixed-width unicode has no Zarr v3 spec yet; variable-length strings have."""
    return values.astype(object) if values.dtype.kind == "U" else values


def _encoding(dataset: xr.Dataset, zarr_format: int) -> dict[Hashable, dict[str, Any]]:
    encoding: dict[Hashable, dict[str, Any]] = {}
    for name, variable in dataset.data_vars.items():
        encoding[name] = {"chunks": tuple(c[0] for c in variable.data.chunks)}
        fill_value = _stored_fill_value(variable)
        if zarr_format == 3 and fill_value is not None:
            encoding[name]["fill_value"] = fill_value  # unwritten chunks read as no data
    if APPEND_DIM in dataset.coords and dataset[APPEND_DIM].dtype.kind == "M":
        encoding[APPEND_DIM] = dict(_TIME_ENCODING)
    return encoding


def _template_marker(group: str) -> str:
    return f"{STATE_PREFIX}/template-{group or _ROOT_KEY}.json"


def _write_template(writer: _Writer, group: str, dataset: xr.Dataset,
                    attrs: Mapping[str, Any]) -> None:
    """Write the template in place between its marker's creation and deletion.

    A template whose marker is still there was cut short: its group is cleared and written
    again (no rename: object stores have none).
    """
    location = writer.location
    marker = _template_marker(group)
    if location.exists(marker):
        if group:
            location.delete_tree(group)
        else:
            location.delete_tree("", keep=(STATE_PREFIX,))
    elif _others(location, group):
        raise ZarrStoreError(f"{writer.target(group)} exists and is not an empty folder or a "
                             "Zarr store; choose another store or pass overwrite=True")
    location.write(marker, json.dumps({"group": group}).encode())
    location.delete_tree(writer.markers(group))
    _forget_listings(writer.store)
    # mode "a" on a group cleared above: "w" would delete the store's .xcloud/ (the lease)
    template = _template(dataset, attrs, writer.zarr_format)
    template.to_zarr(writer.store, group=group or None, mode="a", compute=False,
                     consolidated=False, zarr_format=writer.zarr_format,
                     encoding=_encoding(dataset, writer.zarr_format))
    location.delete(marker)


def _forget_listings(store: Any) -> None:
    """Drop what zarr's file system has listed of the store (it may have been cleared)."""
    fs = getattr(store, "fs", None)
    if fs is not None and hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()


def _intent_file(group: str) -> str:
    return f"{STATE_PREFIX}/append-{group or _ROOT_KEY}.json"


def _extend_template(writer: _Writer, group: str, todo: xr.Dataset, attrs: Mapping[str, Any],
                     updates: Mapping[str, Any]) -> None:
    """Grow the arrays along time; an intent object lets an interrupted growth be undone."""
    intent = _intent_file(group)
    size = int(_read(writer, group).sizes[APPEND_DIM])
    writer.location.write(intent, json.dumps({"time_size": size}).encode())
    # xarray rewrites the group attributes on append: hand it the current ones
    template = _template(todo, attrs)
    template.to_zarr(writer.store, group=group or None, mode="a", append_dim=APPEND_DIM,
                     compute=False, consolidated=False, zarr_format=writer.zarr_format)
    _update_attrs(writer, group, updates)
    writer.location.delete(intent)


def _recover_append(writer: _Writer, group: str) -> None:
    """Undo a time extension that was interrupted before its chunks could start."""
    intent = _intent_file(group)
    raw = writer.location.read(intent)
    if raw is None:
        return
    try:
        size = int(json.loads(raw)["time_size"])
    except (ValueError, KeyError):  # killed while writing the intent: nothing was grown yet
        writer.location.delete(intent)
        return
    node = _open(writer, group)
    for _, array in node.arrays():
        dims = list(_array_dims(array))
        if APPEND_DIM in dims and array.shape[dims.index(APPEND_DIM)] > size:
            shape = list(array.shape)
            shape[dims.index(APPEND_DIM)] = size
            array.resize(tuple(shape))
    _update_attrs(writer, group, remove=[PENDING_ATTR])
    writer.location.delete(intent)


def _array_dims(array: Any) -> Sequence[str]:
    names = getattr(array.metadata, "dimension_names", None)
    return names or array.attrs.get("_ARRAY_DIMENSIONS", ())


# -- chunk tasks ----------------------------------------------------------------------------


def _write_chunk(block: np.ndarray, target: _ChunkTarget) -> int:
    """Write one block into its region of the Zarr array, then mark it done."""
    location = target.store
    region = ", ".join(f"{s.start}:{s.stop}" for s in target.region)
    try:
        array = _zarr().open_array(location.zarr_store(), path=target.array, mode="r+",
                                   zarr_format=target.zarr_format)
        # write the chunk's object even when all of it is the fill value, so that resuming
        # can tell a written chunk (marker and object) from a lost one (marker alone)
        array = array.with_config({"write_empty_chunks": True})
        array[target.region] = np.asarray(block)
    except (OSError, RuntimeError, TimeoutError) as error:
        raise StoreWriteError(f"could not write the chunk [{region}] of {target.array!r} to "
                              f"{location} (after the store client's retries): {error}"
                              ) from error
    _save_read_failures(location, target.failures, take_read_failures())
    _put(location, target.marker, b"")
    return 1


def _put(location: StoreLocation, key: str, data: bytes) -> None:
    try:
        location.write(key, data)
    except (OSError, RuntimeError, TimeoutError) as error:
        raise StoreWriteError(f"could not write {location.key(key)} of {location} (after the "
                              f"store client's retries): {error}") from error


def _save_read_failures(location: StoreLocation, prefix: str,
                        failures: Sequence[ReadFailure]) -> None:
    """Save read failures as a new report object (written whole: never half a file)."""
    if not failures:
        return
    data = json.dumps([vars(failure) for failure in failures]).encode()
    _put(location, f"{prefix}/{uuid.uuid4().hex}.json", data)


def _collect_read_failures(writer: _Writer) -> list[ReadFailure]:
    """The saved reports, what this process and distributed workers still hold, deduplicated."""
    _save_read_failures(writer.location, writer.failures, take_read_failures())
    with contextlib.suppress(ImportError, ValueError):
        from distributed import default_client

        for held in default_client().run(take_read_failures).values():
            _save_read_failures(writer.location, writer.failures, held)
    found = {}
    reports = [n for n in writer.location.list(writer.failures) if n.endswith(".json")]
    for report in reports:
        raw = writer.location.read(f"{writer.failures}/{report}")
        for record in json.loads(raw or b"[]"):
            failure = ReadFailure(**record)
            found[(failure.item, failure.band, failure.chunk)] = failure
    return list(found.values())


def _read_failures_attr(previous: Mapping[str, Any] | None,
                        failures: Sequence[ReadFailure]) -> dict[str, Any]:
    previous = previous or {}
    return {
        "count": int(previous.get("count", 0)) + len(failures),
        "items": sorted({*previous.get("items", ()), *(f.item for f in failures)}),
        "assets": sorted({*previous.get("assets", ()),
                          *(f"{f.item}:{f.band}" for f in failures)}),
    }


def _stored_chunks(writer: _Writer, array_path: str) -> set[str]:
    """Keys (``t.i.j``) of the chunk objects an array holds (format 2 ``0.1.2``, format 3
    ``c/0/1/2``); one listing (a miss only rewrites a chunk)."""
    found = writer.location.find(array_path)
    if writer.zarr_format == 3:
        return {p[2:].replace("/", ".") for p in found if p.startswith("c/")}
    return {p for p in found if p and p[0].isdigit()}


def _chunk_tasks(writer: _Writer, group: str, name: str, data: da.Array, dims: Sequence[Hashable],
                 time_start: int) -> tuple[list[Any], int]:
    done_prefix = f"{writer.markers(group)}/{name}"
    array_path = f"{group}/{name}" if group else name
    # a marker is trusted only with its chunk's object: every chunk is written, empty or not
    done = set(writer.location.list(done_prefix)) & _stored_chunks(writer, array_path)
    offsets = [time_start if dim == APPEND_DIM else 0 for dim in dims]
    starts = [np.cumsum((0, *c)).tolist() for c in data.chunks]
    blocks = data.to_delayed().reshape(data.numblocks)
    tasks, skipped = [], 0
    for index in np.ndindex(*data.numblocks):
        key = ".".join(str(i + o) for i, o in zip(index, offsets, strict=True))
        if key in done:
            skipped += 1
            continue
        region = tuple(slice(s[i] + o, s[i + 1] + o)
                       for s, i, o in zip(starts, index, offsets, strict=True))
        target = _ChunkTarget(writer.location, array_path, writer.zarr_format, region,
                              f"{done_prefix}/{key}", writer.failures)
        tasks.append(dask.delayed(_write_chunk, pure=True)(
            blocks[index], target, dask_key_name=f"xcloud-to-zarr-{array_path}-{key}"))
    return tasks, skipped


def _write_chunks(writer: _Writer, group: str, dataset: xr.Dataset, *,
                  time_start: int) -> tuple[int, int]:
    tasks, skipped = [], 0
    for name, variable in dataset.data_vars.items():
        found, done = _chunk_tasks(writer, group, str(name), variable.data, variable.dims,
                                   time_start)
        tasks += found
        skipped += done
    def progress(done: int) -> None:
        _check_lease(writer)  # a job that lost its lease stops before its next batch
        if writer.progress:
            _report_progress(group, done, len(tasks))

    compute_in_batches(tasks, batch_size=_batch_size(), scheduler=writer.scheduler,
                       on_batch=progress)
    return len(tasks), skipped


def _report_progress(group: str, done: int, total: int) -> None:
    width = 30
    filled = round(width * done / total)
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{' ' * (width - filled)}] {done}/{total} chunks "
          f"{group or 'mask'}", end=end, file=sys.stderr, flush=True)


def _batch_size() -> int:
    """Chunks computed together: two per thread of the active scheduler.

    Handing the scheduler every chunk at once lets it read far ahead (peak memory grew with
    the image); batches of neighbouring chunks keep it bounded by chunk size and threads, and
    :func:`xcloud.engine.batches.compute_in_batches` carries what neighbouring batches share.
    """
    threads = dask.config.get("num_workers", None) or os.cpu_count() or 1
    try:
        from distributed import default_client

        threads = sum(default_client().nthreads().values())
    except (ImportError, ValueError):
        pass
    return max(2, 2 * int(threads))


def _finish_group(writer: _Writer, group: str, *, resumed: bool) -> None:
    _check_lease(writer)
    _update_attrs(writer, group, remove=[PENDING_ATTR])
    writer.location.delete_tree(writer.markers(group))
    if resumed and writer.location.local:  # temporary files of writes a kill cut short
        for partial in Path(writer.target(group)).rglob("*.partial"):
            partial.unlink(missing_ok=True)


# -- multiscales ----------------------------------------------------------------------------


def _existing_levels(writer: _Writer) -> dict[int, str]:
    levels = {}
    for child in _others(writer.location):
        attrs = None if child.startswith(".") else _group_attrs(writer, child)
        if attrs and FACTOR_ATTR in attrs:
            levels[int(attrs[FACTOR_ATTR])] = child
    return levels


def _write_levels(writer: _Writer, factors: Sequence[int]) -> list[tuple[str, _GroupResult]]:
    existing = _existing_levels(writer)
    wanted = sorted(set(factors) | set(existing))
    if not wanted:
        return []
    base = _read(writer, "")
    results = []
    for factor in wanted:
        level = _level_dataset(base, factor)
        name = existing.get(factor) or _level_name(base, factor)
        results.append((name, _write_group(writer, name, level,
                                           extra_attrs={FACTOR_ATTR: factor})))
    return results


def _spacing(coord: xr.DataArray) -> float:
    if coord.size < 2:
        raise ValueError(f"need at least 2 pixels along {coord.name!r} to know the pixel size")
    return float(coord.values[1] - coord.values[0])


def grid_transform(dataset: xr.Dataset | xr.DataArray) -> list[float]:
    """Affine ``(a, b, c, d, e, f)`` (STAC ``proj:transform``) of the grid of x/y pixel centres.

    Parameters
    ----------
    dataset
        With 1-D ``x`` and ``y`` coordinates (at least 2 pixels each), evenly spaced.

    Returns
    -------
    list of float
        Pixel size along x, 0, left edge, 0, pixel size along y (negative north-up), top edge.
    """
    dx, dy = _spacing(dataset["x"]), _spacing(dataset["y"])
    x0 = float(dataset["x"].values[0]) - dx / 2
    y0 = float(dataset["y"].values[0]) - dy / 2
    return [dx, 0.0, x0, 0.0, dy, y0]


def _level_name(base: xr.Dataset, factor: int) -> str:
    resolution = abs(_spacing(base["x"])) * factor
    units = None
    if "spatial_ref" in base.coords and "crs_wkt" in base["spatial_ref"].attrs:
        pyproj = import_optional("pyproj", extra="geo")
        crs = pyproj.CRS.from_wkt(base["spatial_ref"].attrs["crs_wkt"])
        units = crs.axis_info[0].unit_name if crs.axis_info else None
    return f"r{resolution:g}m" if units in ("metre", "meter") else f"x{factor}"


def _resampling(variable: xr.DataArray) -> str:
    """``majority`` for class masks (uint8), ``mean`` for probabilities (floats)."""
    if variable.dtype == np.uint8:
        return "majority"
    if variable.dtype.kind == "f":
        return "mean"
    raise ValueError(f"cannot build multiscale levels of {variable.name!r} ({variable.dtype}): "
                     "only uint8 class masks and float probabilities can be downsampled")


def _level_dataset(base: xr.Dataset, factor: int) -> xr.Dataset:
    """Level 0 (read back from the store) downsampled by ``factor`` (majority or mean)."""
    from ..data.resample import resample_dataarray

    level = xr.Dataset()
    for name, variable in base.data_vars.items():
        method = _resampling(variable)
        nodata = variable.attrs.get("nodata") if method == "majority" else None
        level[name] = resample_dataarray(variable, factor, method=method, nodata=nodata)
    ref = level.coords.get("spatial_ref")
    if ref is not None and "GeoTransform" not in ref.attrs:
        a, b, c, d, e, f = grid_transform(level)
        geo = " ".join(repr(v) for v in (c, a, b, f, d, e))
        level = level.assign_coords(spatial_ref=ref.copy().assign_attrs(GeoTransform=geo))
    return _coarse_chunks(level, base, factor)


def _coarse_chunks(level: xr.Dataset, base: xr.Dataset, factor: int) -> xr.Dataset:
    """Spatial chunks of a level: level 0's divided by the factor (one input chunk per task)."""
    for name, variable in level.data_vars.items():
        chunks = dict(zip(base[name].dims, base[name].data.chunksize, strict=True))
        sizes = {d: math.ceil(chunks[d] / factor) if d in _SPATIAL else chunks[d]
                 for d in variable.dims}
        level[name] = variable.chunk(sizes)
    return level


def _grid_fields(dataset: xr.Dataset) -> dict[str, list[Any]]:
    return {"proj:shape": [dataset.sizes["y"], dataset.sizes["x"]],
            "proj:transform": grid_transform(dataset)}


def _multiscales_attrs(writer: _Writer, levels: Sequence[str]) -> dict[str, Any]:
    base = _read(writer, "")
    methods = {_RESAMPLING_NAMES[_resampling(v)] for v in base.data_vars.values()}
    layout = [{"asset": ".", "transform": {"scale": [1.0, 1.0]}, **_grid_fields(base)}]
    for name in levels:
        attrs = _group_attrs(writer, name)
        if attrs is None:
            raise ZarrStoreError(f"{writer.target(name)} is not a Zarr group; the overview "
                                 "level was not written")
        factor = float(attrs[FACTOR_ATTR])
        layout.append({"asset": name, "derived_from": ".",
                       "transform": {"scale": [factor, factor], "translation": [0.0, 0.0]},
                       **_grid_fields(_read(writer, name))})
    multiscales: dict[str, Any] = {"layout": layout}
    if len(methods) == 1:
        multiscales["resampling_method"] = methods.pop()
    return {"zarr_conventions": [_MULTISCALES_CONVENTION], "multiscales": multiscales}


# -- finishing ------------------------------------------------------------------------------


def _finish(writer: _Writer, levels: Sequence[str], *, consolidated: bool) -> int:
    """Mark the store complete, consolidate its metadata and drop the write state.

    Returns the number of read failures recorded by the write.
    """
    was_consolidated = _has_consolidated_metadata(writer)
    updates: dict[str, Any] = {COMPLETE_ATTR: True}
    if levels:
        updates.update(_multiscales_attrs(writer, levels))
    failures = _collect_read_failures(writer)
    if failures:
        previous = (_group_attrs(writer, "") or {}).get(READ_FAILURES_ATTR)
        updates[READ_FAILURES_ATTR] = _read_failures_attr(previous, failures)
    _check_lease(writer)
    _update_attrs(writer, "", updates)
    if consolidated or was_consolidated:
        _zarr().consolidate_metadata(writer.store, zarr_format=writer.zarr_format)
    _clear_state(writer.location)
    return len(failures)


def _has_consolidated_metadata(writer: _Writer) -> bool:
    if writer.zarr_format == 2:
        return writer.location.exists(".zmetadata")
    metadata = json.loads(writer.location.read("zarr.json") or b"{}")
    return metadata.get("consolidated_metadata") is not None


@contextlib.contextmanager
def _quiet_consolidation_warning() -> Iterator[None]:
    """Zarr's notes that v3 lacks consolidated metadata in its spec, and that ``.xcloud/`` is
    no Zarr node, are noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        # the write state under .xcloud/ is no Zarr node, and is not meant to be one
        warnings.filterwarnings("ignore", message=f"Object at {STATE_PREFIX} is not recognized")
        yield
