"""STAC items describing cloud masks, e.g. a Zarr store written by :func:`~.zarr.to_zarr`.

The item has the mask's footprint in lon/lat (edges densified before reprojection, so the
footprint of a UTM tile is not cut short), ``datetime`` (one time step) or
``start_datetime``/``end_datetime`` (a time series), the projection extension (``proj:code``,
``proj:shape``, ``proj:transform``, ``proj:bbox`` of level 0), the processing extension
(``processing:software`` with xcloud's version, ``processing:lineage`` naming the model and
its version) plus ``xcloud:model``/``xcloud:model_version``, one asset for the
store (``application/vnd+zarr``, role ``data``) carrying the classification extension (every
class of the mask, the no-data class flagged ``nodata``), and ``derived_from`` links to the
source items.

:func:`validate_item` checks an item against the JSON schemas of its STAC version and of every
extension it declares without any network access: the schemas ship in ``schemas/`` beside
this module (see the README there for where each comes from and its licence).

:func:`write_item` writes ``<folder>/<item id>.json`` beside the store (default id: the
store's name without ``.zarr``, so ``masks/T33UUU.zarr`` gets ``masks/T33UUU.json``), with the
asset href relative to it. Item ids are sanitised before they become file names. The store may
be in an object store (``s3://bucket/masks/T33UUU.zarr`` with ``storage_options``): the item
is then written beside it in the bucket (``s3://bucket/masks/T33UUU.json``, one PUT), and its
relative asset href resolves to the store there. :func:`validate_item` also takes the URL or
path of an item file.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import xarray as xr

from .._optional import import_optional
from .._paths import safe_name
from .._version import __version__
from ..data.load import SOURCE_ITEMS_ATTR
from ..engine.attributes import MASK_VARIABLE
from ..errors import CrsError, StacError
from .store import StoreLocation, store_location
from .zarr import grid_transform, open_mask

__all__ = [
    "ASSET_KEY",
    "PROCESSING_EXTENSION",
    "item_path",
    "mask_item",
    "offline_schemas",
    "read_item",
    "validate_item",
    "write_item",
]

ASSET_KEY = "zarr"
"""Key of the Zarr store's asset in the item."""

PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"

_DENSIFY = 21  # points per footprint edge before reprojection
_SCHEMA_FOLDERS = {  # shipped folder -> the URL its files are published under
    "stac-spec": "https://schemas.stacspec.org",
    "stac-extensions": "https://stac-extensions.github.io",
    "geojson": "https://geojson.org",
    "proj": "https://proj.org",
}
_ITEM_SCHEMA = "https://schemas.stacspec.org/v{version}/item-spec/json-schema/item.json"
_MAX_REPORTED = 10  # validation errors listed in the message

SourceItem = Any  # pystac.Item, a STAC item dict or an item id


def mask_item(
    mask: xr.DataArray | xr.Dataset | str | os.PathLike[str],
    *,
    href: str,
    item_id: str | None = None,
    source_items: Sequence[SourceItem] = (),
    datetime: dt.datetime | None = None,
) -> Any:
    """A STAC item describing a mask and the asset where it is stored.

    Parameters
    ----------
    mask
        A mask from :func:`xcloud.predict` (or a Dataset holding one), or the path of a Zarr
        store written by :func:`~.zarr.to_zarr`. It needs x/y coordinates and a
        ``spatial_ref`` coordinate with ``crs_wkt``.
    href
        Where the asset (the Zarr store) is: a URL, an absolute path or a path relative to
        where the item will be saved.
    item_id
        Default: the asset's name without ``.zarr``.
    source_items
        Items the mask was computed from (pystac Items, item dicts or ids): ``derived_from``
        links to their self hrefs, or to their ids when they have none. The ids in the mask's
        ``source_items`` attribute are linked too.
    datetime
        For a mask without a ``time`` coordinate.

    Returns
    -------
    pystac.Item
    """
    pystac = import_optional("pystac", extra="geo")
    dataset = _as_dataset(mask)
    variable = _main_variable(dataset)
    transform = grid_transform(dataset)
    shape = [dataset.sizes["y"], dataset.sizes["x"]]
    crs = _crs(dataset)
    native_bbox = _bounds(transform, shape)
    geometry, bbox = _footprint(native_bbox, crs)
    start, end = _time_range(dataset, datetime)
    item = pystac.Item(
        id=item_id or _default_id(href), geometry=geometry, bbox=bbox,
        datetime=start if start == end else None,
        start_datetime=None if start == end else start,
        end_datetime=None if start == end else end,
        properties=_properties(variable.attrs, abs(transform[0])),
    )
    _add_projection(item, crs, shape, transform, native_bbox)
    _add_asset(item, href, variable.attrs)
    attr_ids = dataset.attrs.get(SOURCE_ITEMS_ATTR) or variable.attrs.get(SOURCE_ITEMS_ATTR, ())
    for link in _source_links(source_items, attr_ids):
        item.add_link(link)
    return item


def write_item(
    store: str | os.PathLike[str],
    *,
    item_id: str | None = None,
    source_items: Sequence[SourceItem] = (),
    datetime: dt.datetime | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | str:
    """Write the STAC item of a Zarr store beside it, as ``<item id>.json``.

    Parameters
    ----------
    store
        A store written by :func:`~.zarr.to_zarr`: a local path, or a URL (``s3://...``,
        ``gs://``, ``az://``, ``memory://``, ``file://``).
    item_id, source_items, datetime
        As for :func:`mask_item`. The file name is the id with every character outside
        ``A-Z a-z 0-9 . _ -`` replaced by ``_`` (and no leading dots), so no id can place the
        file outside the store's folder.
    storage_options
        Options of the store's fsspec file system (as for :func:`~.zarr.to_zarr`).

    Returns
    -------
    pathlib.Path or str
        The item file (its URL for a store that is not local); its asset href is relative
        (``./<store name>``).
    """
    location = store_location(store, storage_options)
    if location.local:
        root = Path(location.url)
        item = mask_item(root, href=str(root), item_id=item_id, source_items=source_items,
                         datetime=datetime)
        path = item_path(root.parent, item.id)
        item.set_self_href(str(path))
        item.make_asset_hrefs_relative()
        item.save_object(include_self_link=False, dest_href=str(path))
        return path
    dataset = open_mask(location.url, storage_options=location.storage_options)
    item = mask_item(dataset, href=location.url, item_id=item_id, source_items=source_items,
                     datetime=datetime)
    target = location.sibling(f"{safe_name(item.id)}.json")
    item.set_self_href(target.url)
    item.make_asset_hrefs_relative()
    document = item.to_dict(include_self_link=False, transform_hrefs=False)
    target.write("", json.dumps(document, indent=2).encode())
    return target.url


def item_path(folder: str | os.PathLike[str], item_id: str) -> Path:
    """``<folder>/<sanitised item id>.json``, always directly inside ``folder``."""
    return Path(folder).resolve() / f"{safe_name(item_id)}.json"


def validate_item(item: Any, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Validate a STAC item against the JSON schemas, offline.

    The item is checked against the core item schema of its ``stac_version`` and the schema
    of every extension in its ``stac_extensions``, read from the copies shipped with xcloud
    (:func:`offline_schemas`); nothing is fetched from the network but the item file itself
    when a URL is given.

    Parameters
    ----------
    item
        A ``pystac.Item``, an item dict, or the path or URL of an item file
        (``s3://bucket/masks/T33UUU.json``...).
    storage_options
        Options of the fsspec file system that reads an item URL.

    Raises
    ------
    StacError
        The item does not validate (the message lists where and why, the deepest error of
        each failing schema), is not an item, or declares a STAC version or extension whose
        schema xcloud does not ship.
    """
    jsonschema = import_optional("jsonschema", extra="geo")
    if isinstance(item, (str, os.PathLike)):
        document = read_item(item, storage_options=storage_options)
    else:
        document = item.to_dict() if hasattr(item, "to_dict") else dict(item)
    problems = [
        f"{url}: {message}"
        for url in _schema_urls(document)
        for message in _errors(jsonschema, document, url)
    ]
    if problems:
        listed = "\n  ".join(problems[:_MAX_REPORTED])
        more = len(problems) - _MAX_REPORTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise StacError(f"STAC item {document.get('id')!r} does not validate:\n  {listed}{tail}")


def read_item(href: str | os.PathLike[str], *,
              storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The item dict in a file: a local path or a URL fsspec reaches (one GET).

    Parameters
    ----------
    href
        Path or URL of the item's JSON file.
    storage_options
        Options of the fsspec file system (``endpoint_url``, ``anon``...).

    Returns
    -------
    dict

    Raises
    ------
    StacError
        The file is missing or not JSON.
    """
    location: StoreLocation = store_location(href, storage_options)
    raw = location.read("")
    if raw is None:
        raise StacError(f"no STAC item at {location}")
    try:
        return dict(json.loads(raw))
    except ValueError as error:
        raise StacError(f"{location} is not a JSON STAC item: {error}") from error


def offline_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schemas shipped with xcloud, by the URL each is published under.

    Returns
    -------
    dict
        A new dict on every call (the caller may change it), e.g. to fill the
        ``schema_cache`` of pystac's ``JsonSchemaSTACValidator`` so that ``item.validate``
        runs offline.
    """
    return {url: json.loads(path.read_text(encoding="utf-8")) for url, path in _schema_files()}


# -- offline validation ---------------------------------------------------------------------


def _schema_files(folder: Any = None, url: str = "") -> Iterator[tuple[str, Any]]:
    """(URL, file) of every shipped schema, walking ``schemas/`` (importlib resources)."""
    if folder is None:
        root = files(__package__) / "schemas"
        for name, base in _SCHEMA_FOLDERS.items():
            yield from _schema_files(root / name, base)
        return
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _schema_files(entry, f"{url}/{entry.name}")
        elif entry.name.endswith(".json"):
            yield f"{url}/{entry.name}", entry


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    """A ``referencing`` registry of the shipped schemas that never looks anything up."""
    referencing = import_optional("referencing", extra="geo")
    from referencing.jsonschema import DRAFT7

    resources = [(url, referencing.Resource.from_contents(schema, default_specification=DRAFT7))
                 for url, schema in offline_schemas().items()]
    return referencing.Registry().with_resources(resources)


def _schema_urls(document: Mapping[str, Any]) -> list[str]:
    if document.get("type") != "Feature":
        raise StacError(f"not a STAC item: its type is {document.get('type')!r}, not 'Feature'")
    urls = [_ITEM_SCHEMA.format(version=document.get("stac_version")),
            *document.get("stac_extensions", ())]
    missing = [url for url in urls if url not in _registry()]
    if missing:
        raise StacError(
            f"cannot validate offline: xcloud ships no copy of {', '.join(missing)} (the "
            "shipped schemas are listed in xcloud/outputs/schemas/README.md); validate "
            "online with pystac's item.validate() instead"
        )
    return urls


def _errors(jsonschema: Any, document: Mapping[str, Any], url: str) -> list[str]:
    exceptions = import_optional("referencing.exceptions", extra="geo")
    validator = jsonschema.Draft7Validator({"$ref": url}, registry=_registry())
    try:
        found = list(validator.iter_errors(document))
    except exceptions.Unresolvable as error:  # a $ref to a schema that is not shipped
        raise StacError(f"cannot validate offline against {url}: {error}") from error
    return list(dict.fromkeys(message for error in found for message in _deepest(error)))


def _deepest(error: Any) -> list[str]:
    """Where and why: the deepest errors under ``error`` (oneOf/anyOf keep their reasons in
    ``context``; the deepest is the one about the field that is wrong)."""
    leaves = list(_leaves(error))
    depth = max(len(leaf.absolute_path) for leaf in leaves)
    return [f"{leaf.json_path}: {_short(leaf.message)}" for leaf in leaves
            if len(leaf.absolute_path) == depth]


def _leaves(error: Any) -> Iterator[Any]:
    if not error.context:
        yield error
    for child in error.context:
        yield from _leaves(child)


def _short(message: str, limit: int = 160) -> str:
    return message if len(message) <= limit else f"{message[:limit]}..."


# -- reading the mask -----------------------------------------------------------------------


def _as_dataset(mask: xr.DataArray | xr.Dataset | str | os.PathLike[str]) -> xr.Dataset:
    if isinstance(mask, xr.Dataset):
        return mask
    if isinstance(mask, xr.DataArray):
        return mask.to_dataset(name=mask.name or MASK_VARIABLE, promote_attrs=True)
    return open_mask(mask)


def _main_variable(dataset: xr.Dataset) -> xr.DataArray:
    variables = list(dataset.data_vars.values())
    if not variables:
        raise ValueError("the mask has no data variable")
    return next((v for v in variables if "flag_values" in v.attrs), variables[0])


def _crs(dataset: xr.Dataset) -> Any:
    pyproj = import_optional("pyproj", extra="geo")
    ref = dataset.coords.get("spatial_ref")
    wkt = None if ref is None else ref.attrs.get("crs_wkt") or ref.attrs.get("spatial_ref")
    if not wkt:
        raise CrsError("the mask has no CRS: it needs a spatial_ref coordinate with crs_wkt "
                         "(rioxarray's .rio.write_crs adds one)")
    return pyproj.CRS.from_wkt(wkt)


def _bounds(transform: Sequence[float], shape: Sequence[int]) -> list[float]:
    a, _, c, _, e, f = transform
    xs, ys = (c, c + a * shape[1]), (f, f + e * shape[0])
    return [min(xs), min(ys), max(xs), max(ys)]


def _footprint(bbox: Sequence[float], crs: Any) -> tuple[dict[str, Any], list[float]]:
    """Polygon and bbox in lon/lat of a native bbox, edges densified before reprojection."""
    pyproj = import_optional("pyproj", extra="geo")
    west, south, east, north = bbox
    steps = np.linspace(0.0, 1.0, _DENSIFY)[:-1]
    xs = np.concatenate([west + (east - west) * steps, np.full(steps.size, east),
                         east - (east - west) * steps, np.full(steps.size, west)])
    ys = np.concatenate([np.full(steps.size, south), south + (north - south) * steps,
                         np.full(steps.size, north), north - (north - south) * steps])
    transformer = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = transformer.transform(xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    return geometry, [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]


def _time_range(dataset: xr.Dataset,
                default: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if "time" not in dataset.coords:
        if default is None:
            raise ValueError("the mask has no time coordinate; pass datetime=...")
        return default, default
    times = np.atleast_1d(dataset["time"].values).astype("datetime64[us]")
    first, last = (t.astype(dt.datetime).replace(tzinfo=dt.timezone.utc)
                   for t in (times.min(), times.max()))
    return first, last


def _default_id(href: str) -> str:
    name = PurePosixPath(href.rstrip("/")).name
    return name.removesuffix(".zarr") or "cloudmask"


# -- item parts -----------------------------------------------------------------------------


def _properties(attrs: Mapping[str, Any], gsd: float) -> dict[str, Any]:
    version = str(attrs.get("xcloud_version", __version__))
    properties: dict[str, Any] = {"gsd": gsd, "processing:software": {"xcloud": version}}
    if "model" in attrs:
        model = str(attrs["model"])
        if "model_version" in attrs:
            model += f" ({attrs['model_version']})"
        properties["processing:lineage"] = f"cloud mask by xcloud {version}, model {model}"
    for key in ("model", "model_version", "class_scheme"):
        if key in attrs:
            properties[f"xcloud:{key}"] = attrs[key]
    return properties


def _add_projection(item: Any, crs: Any, shape: list[int], transform: list[float],
                    bbox: list[float]) -> None:
    from pystac.extensions.projection import ProjectionExtension

    projection = ProjectionExtension.ext(item, add_if_missing=True)
    authority = crs.to_authority()
    projection.apply(code=":".join(authority) if authority else None,
                     wkt2=None if authority else crs.to_wkt(),
                     shape=shape, transform=transform, bbox=bbox)
    if PROCESSING_EXTENSION not in item.stac_extensions:
        item.stac_extensions.append(PROCESSING_EXTENSION)


def _add_asset(item: Any, href: str, attrs: Mapping[str, Any]) -> None:
    pystac = import_optional("pystac", extra="geo")
    from pystac.extensions.classification import ClassificationExtension

    asset = pystac.Asset(href=href, media_type=pystac.MediaType.ZARR, roles=["data"],
                         title=str(attrs.get("long_name", "cloud mask")))
    item.add_asset(ASSET_KEY, asset)
    classes = _classes(attrs)
    if classes:
        ClassificationExtension.ext(asset, add_if_missing=True).classes = classes


def _descriptions(model: str | None) -> dict[int, str]:
    from ..errors import UnknownModelError
    from ..models.registry import get

    if not model:
        return {}
    try:
        scheme = get(str(model)).info.scheme
    except UnknownModelError:
        return {}
    return {c.value: c.description for c in scheme.all_classes()}


def _classes(attrs: Mapping[str, Any]) -> list[Any]:
    """Classification objects from the CF flag attributes (none for probabilities)."""
    from pystac.extensions.classification import Classification

    if "flag_values" not in attrs:
        return []
    values = [int(v) for v in np.atleast_1d(attrs["flag_values"])]
    names = str(attrs.get("flag_meanings", "")).split()
    colors = str(attrs.get("flag_colors", "")).split()
    if len(names) != len(values) or (colors and len(colors) != len(values)):
        raise ValueError("flag_values, flag_meanings and flag_colors have different lengths")
    descriptions = _descriptions(attrs.get("model"))
    nodata = attrs.get("nodata")
    return [
        Classification.create(
            value=value, name=name,
            description=descriptions.get(value, name.replace("_", " ")),
            color_hint=colors[i].lstrip("#").upper() if colors else None,
            nodata=True if nodata is not None and value == int(nodata) else None,
        )
        for i, (value, name) in enumerate(zip(values, names, strict=True))
    ]


def _source_link(source: SourceItem) -> Any:
    pystac = import_optional("pystac", extra="geo")
    if isinstance(source, pystac.Item):
        item_id, href = source.id, source.get_self_href()
    elif isinstance(source, Mapping):
        item_id = str(source.get("id", ""))
        href = next((link.get("href") for link in source.get("links", ())
                     if link.get("rel") == "self"), None)
    else:
        item_id, href = str(source), None
    return pystac.Link(rel=pystac.RelType.DERIVED_FROM, target=href or item_id,
                       media_type=pystac.MediaType.GEOJSON if href else None, title=item_id)


def _source_links(sources: Sequence[SourceItem], attr_ids: Sequence[str]) -> list[Any]:
    links = [_source_link(source) for source in sources]
    known = {link.title for link in links}
    ids = [attr_ids] if isinstance(attr_ids, str) else list(attr_ids)
    return links + [_source_link(i) for i in ids if str(i) not in known]
