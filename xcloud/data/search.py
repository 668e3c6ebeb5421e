"""``search``: find Sentinel-2 items in a STAC API (pystac-client) or a local static catalogue."""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime as _datetime
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .._optional import import_optional
from ..errors import StacError

__all__ = ["search"]

DatetimeLike = str | _datetime | Sequence[str | _datetime | None] | None

_QUERY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le,
    "gt": operator.gt, "gte": operator.ge,
    "in": lambda value, options: value in options,
}


def search(
    url: str | Path,
    *,
    collections: str | Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    intersects: Mapping[str, Any] | None = None,
    datetime: DatetimeLike = None,
    query: Mapping[str, Any] | None = None,
    filter: Mapping[str, Any] | str | None = None,  # noqa: A002  (the STAC API's name)
    filter_lang: str | None = None,
    ids: Sequence[str] | None = None,
    sortby: str | Sequence[str] | None = None,
    max_items: int | None = None,
    limit: int | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    retries: int = 4,
) -> Any:
    """Search a STAC API (or a local static catalogue) and return the matching items.

    Parameters
    ----------
    url
        Root of a STAC API (``https://earth-search.aws.element84.com/v1``), or the path of a
        local static catalogue, collection or item-collection JSON file.
    collections, bbox, intersects, datetime, ids, sortby, max_items, limit
        As in the STAC API item search (``bbox`` in lon/lat, ``datetime`` as
        ``"2024-06-01/2024-06-30"`` or a pair).
    query, filter, filter_lang
        Property filters: the query extension (``{"eo:cloud_cover": {"lt": 20}}``) or a CQL2
        filter (needs an API that supports it; static catalogues support ``query`` only).
    headers, timeout, retries
        HTTP headers, the timeout of one request in seconds, and how many times a failed
        request (connection error, timeout, HTTP 429/5xx) is retried with exponential backoff.

    Returns
    -------
    pystac.ItemCollection
        The items, possibly none (``len(result) == 0``); :func:`xcloud.load` refuses an empty
        collection with :class:`~xcloud.errors.NoItemsError`.
    """
    pystac = import_optional("pystac", extra="geo")
    criteria = {"collections": collections, "bbox": bbox, "intersects": intersects,
                "datetime": datetime, "query": query, "ids": ids, "max_items": max_items}
    path = _local_path(url)
    if path is not None:
        if filter is not None:
            raise StacError(
                "CQL2 `filter` needs a STAC API; a static catalogue is searched in-process "
                "with `query`, `bbox`, `datetime`, `ids` and `collections` only"
            )
        return pystac.ItemCollection(_search_static(path, **criteria))
    client = _open_client(str(url), headers=headers, timeout=timeout, retries=retries)
    try:
        found = client.search(filter=filter, filter_lang=filter_lang, sortby=sortby,
                              limit=limit, **criteria)
        return found.item_collection()
    except Exception as error:  # pystac-client raises APIError, requests errors, ...
        raise StacError(f"STAC search at {url} failed: {error}") from error


def _local_path(url: str | Path) -> Path | None:
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https"):
        return None
    path = Path(parsed.path if parsed.scheme == "file" else text)
    if not path.exists():
        raise StacError(f"{text} is neither an http(s) STAC API nor an existing local file")
    return path


def _open_client(url: str, *, headers: Mapping[str, str] | None, timeout: float,
                 retries: int) -> Any:
    client_module = import_optional("pystac_client", extra="geo")
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(total=retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=None, raise_on_status=False)
    stac_io = StacApiIO(headers=dict(headers or {}), timeout=timeout, max_retries=retry)
    try:
        return client_module.Client.open(url, stac_io=stac_io)
    except Exception as error:
        raise StacError(f"cannot open the STAC API at {url}: {error}") from error


def _static_items(path: Path) -> Iterable[Any]:
    pystac = import_optional("pystac", extra="geo")
    document = json.loads(path.read_text())
    if document.get("type") == "FeatureCollection":
        yield from pystac.ItemCollection.from_dict(document, preserve_dict=False)
    elif document.get("type") == "Feature":
        yield pystac.Item.from_file(str(path))
    else:
        yield from pystac.read_file(str(path)).get_items(recursive=True)


def _search_static(path: Path, *, collections, bbox, intersects, datetime, query, ids,
                   max_items) -> list[Any]:
    wanted_collections = {collections} if isinstance(collections, str) else collections
    window = _datetime_window(datetime)
    area = _area(bbox, intersects)
    found = []
    for item in _static_items(path):
        if max_items is not None and len(found) >= max_items:
            break
        if (
            (ids and item.id not in ids)
            or (wanted_collections and item.collection_id not in wanted_collections)
            or (window and not _in_window(item, window))
            or (area is not None and not area.intersects(_footprint(item)))
            or (query and not _matches_query(item.properties, query))
        ):
            continue
        found.append(item)
    return found


def _area(bbox: Sequence[float] | None, intersects: Mapping[str, Any] | None) -> Any:
    if bbox is None and intersects is None:
        return None
    shapely = import_optional("shapely.geometry", extra="geo")
    if intersects is not None:
        return shapely.shape(intersects)
    return shapely.box(*bbox)


def _footprint(item: Any) -> Any:
    shapely = import_optional("shapely.geometry", extra="geo")
    if item.geometry:
        return shapely.shape(item.geometry)
    return shapely.box(*item.bbox)


def _parse_time(value: str | _datetime | None) -> _datetime | None:
    if value in (None, "", ".."):
        return None
    if isinstance(value, _datetime):
        parsed = value
    else:
        text = str(value).replace("Z", "+00:00")
        parsed = _datetime.fromisoformat(text if "T" in text else f"{text}T00:00:00+00:00")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _datetime_window(value: DatetimeLike) -> tuple[_datetime | None, _datetime | None] | None:
    if value is None:
        return None
    if isinstance(value, str) and "/" in value:
        start, end = value.split("/", 1)
    elif isinstance(value, str | _datetime):
        start = end = value
    else:
        start, end = value
    end_time = _parse_time(end)
    if isinstance(end, str) and "T" not in end and end_time is not None:
        end_time = end_time.replace(hour=23, minute=59, second=59, microsecond=999999)
    return _parse_time(start), end_time


def _in_window(item: Any, window: tuple[_datetime | None, _datetime | None]) -> bool:
    start, end = window
    props = item.properties
    first = _parse_time(props.get("start_datetime") or props.get("datetime"))
    last = _parse_time(props.get("end_datetime") or props.get("datetime"))
    return (start is None or last >= start) and (end is None or first <= end)


def _matches_query(properties: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    for name, conditions in query.items():
        value = properties.get(name)
        for op, expected in conditions.items():
            if op not in _QUERY_OPS:
                raise StacError(f"query operator {op!r} is not one of {sorted(_QUERY_OPS)}")
            if value is None or not _QUERY_OPS[op](value, expected):
                return False
    return True
