"""``search``: find Sentinel-2 items in a STAC API (pystac-client) or a local static catalogue."""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime as _datetime
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .._optional import import_optional
from ..errors import StacError

__all__ = ["RETRY_STATUS", "search"]

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses that are retried (with connection errors and timeouts); others fail at once."""
_MAX_WAIT = 60.0  # seconds: the longest pause between two attempts

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
    backoff: float = 0.5,
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
    headers, timeout, retries, backoff
        HTTP headers; the timeout of one request in seconds (connecting, and waiting for each
        part of the answer); how many times a failed request (connection error, timeout, HTTP
        429/500/502/503/504) is tried again; and the pause before the first retry in seconds,
        doubled at each further retry (``backoff * 2**k``, at most 60 s). Other HTTP errors
        (400, 404, ...) are not retried, nor is an answer cut off after its headers (the
        retries are urllib3's, through pystac-client's ``StacApiIO``). A request therefore
        gives up after at most ``(retries + 1) * timeout`` plus the pauses.

    Returns
    -------
    pystac.ItemCollection
        The items, possibly none (``len(result) == 0``); :func:`xcloud.load` refuses an empty
        collection with :class:`~xcloud.errors.NoItemsError`. An item that the API's paging
        returns again on a later page is kept once (first occurrence).

    Raises
    ------
    StacError
        The API cannot be reached, a request still fails after the retries (the message names
        the URL, the HTTP status or the error, and the number of attempts), or the paging is
        broken: a ``next`` link that leads to a page already read, or a page holding only
        items already returned (either would page forever).
    ValueError
        ``retries``, ``backoff`` or ``timeout`` out of range.
    """
    if retries < 0 or backoff < 0 or timeout <= 0:
        raise ValueError(f"need retries >= 0, backoff >= 0 and timeout > 0; got {retries}, "
                         f"{backoff} and {timeout}")
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
    client = _open_client(str(url), headers=headers, timeout=timeout, retries=retries,
                          backoff=backoff)
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
                 retries: int, backoff: float) -> Any:
    client_module = import_optional("pystac_client", extra="geo")
    stac_io = _stac_io_class()(retries=retries, backoff=backoff)
    try:  # Client.open sets the headers and timeout of stac_io (None would mean no timeout)
        return client_module.Client.open(url, headers=dict(headers or {}), timeout=timeout,
                                         stac_io=stac_io)
    except Exception as error:
        raise StacError(f"cannot open the STAC API at {url}: {error}") from error


def _problem(error: Exception) -> tuple[bool, str]:
    """Whether a failed request was worth repeating, and what went wrong in words."""
    import requests
    import urllib3

    status = getattr(error, "status_code", None)
    if status is not None:
        body = " ".join(str(error).split())[:200]
        return status in RETRY_STATUS, f"HTTP {status} ({body})" if body else f"HTTP {status}"
    cause = error.__context__ or error
    reason = getattr(cause.args[0], "reason", None) if cause.args else None
    if isinstance(cause, requests.Timeout) or isinstance(reason, urllib3.exceptions.TimeoutError):
        return True, f"no answer within the timeout ({cause})"
    if isinstance(cause, requests.ConnectionError):
        return True, f"connection failed ({cause})"
    return False, str(error)


def _failure(error: Exception, attempts: int, what: str) -> StacError:
    """The StacError for a request that failed, the last of ``attempts`` tries."""
    retry, problem = _problem(error)
    tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    advice = ("check the API's status page, or raise `retries=`/`timeout=`"
              if retry else "check the URL and the search parameters")
    return StacError(f"{what} failed after {tries}: {problem}; {advice}")


def _link_key(link: Mapping[str, Any], parameters: Mapping[str, Any] | None) -> str:
    """What identifies the page a ``next`` link asks for: method, URL and body."""
    method = str(link.get("method", "GET")).upper()
    body = link.get("body", {}) if method == "POST" else {}
    if method == "POST" and link.get("merge"):
        body = {**(parameters or {}), **body}
    return json.dumps([method, link["href"], body], sort_keys=True, default=str)


def _page_entries(page: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    key = "features" if page.get("features") else "collections"
    return key, page.get(key) or []


def _new_entries(page: dict[str, Any], seen: set[str], url: str, number: int) -> dict[str, Any]:
    """The page without entries returned before; StacError if nothing in it is new."""
    key, entries = _page_entries(page)
    fresh = []
    for entry in entries:
        ident = json.dumps([entry.get("collection"), entry.get("id")], default=str)
        if ident not in seen:
            seen.add(ident)
            fresh.append(entry)
    if not fresh:
        raise StacError(
            f"page {number} of {url} holds only items already returned: the API's paging "
            "goes round in a cycle. Narrow the search (bbox, datetime) or set `max_items`, "
            "and report it to the API's operator."
        )
    return {**page, key: fresh}


@functools.cache
def _stac_io_class() -> type:
    """pystac-client's StacApiIO with urllib3's retries and paging checks (built on first use).

    urllib3's Retry repeats a request that fails to connect, times out waiting for the answer
    or is answered with one of :data:`RETRY_STATUS` (any method: searches are POSTs), pausing
    ``backoff * 2**k`` before retry ``k``; the last answer, failed or not, comes back to
    pystac-client, which raises it as an APIError.
    """
    import_optional("pystac_client", extra="geo")
    from pystac.link import Link
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    class DoublingRetry(Retry):
        def get_backoff_time(self) -> float:  # urllib3 skips the pause before the first retry
            if not self.history:
                return 0.0
            return min(self.backoff_factor * 2.0 ** (len(self.history) - 1), self.backoff_max)

    class RetryingStacApiIO(StacApiIO):
        def __init__(self, *, retries: int, backoff: float) -> None:
            super().__init__(max_retries=DoublingRetry(
                total=retries, backoff_factor=backoff, backoff_max=_MAX_WAIT,
                status_forcelist=RETRY_STATUS, allowed_methods=None, raise_on_status=False,
                respect_retry_after_header=False))
            self.retries = retries
            self.attempts: int | None = None  # of the last request answered
            self.session.hooks["response"].append(self._count_attempts)

        def _count_attempts(self, response: Any, *args: Any, **kwargs: Any) -> None:
            retried = getattr(response.raw, "retries", None)
            self.attempts = len(retried.history) + 1 if retried is not None else 1

        def request(self, href: str, method: str | None = None,
                    headers: dict[str, str] | None = None,
                    parameters: dict[str, Any] | None = None) -> str:
            self.attempts = None
            try:
                return super().request(href, method, headers, parameters)
            except APIError as error:
                # the attempts of the answer, or (none came) all that urllib3 allowed
                attempts = self.attempts or self.retries + 1
                raise _failure(error, attempts, f"{method or 'GET'} {href}") from error

        def get_pages(self, url: str, method: str | None = None,
                      parameters: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
            followed = {_link_key({"href": url, "method": method or "GET",
                                   "body": parameters or {}}, None)}
            seen: set[str] = set()
            page = self.read_json(url, method=method, parameters=parameters)
            number = 1
            while page.get("features") or page.get("collections"):
                yield _new_entries(page, seen, url, number)
                link = next((k for k in page.get("links", []) if k.get("rel") == "next"), None)
                if link is None:
                    return
                key = _link_key(link, parameters)
                if key in followed:
                    raise StacError(
                        f"the `next` link of page {number} of {url} leads back to a page "
                        f"already read ({link['href']}): the API's paging is broken. Narrow "
                        "the search or set `max_items`, and report it to the API's operator."
                    )
                followed.add(key)
                page = self.read_json(Link.from_dict(link), parameters=parameters)
                number += 1

    return RetryingStacApiIO


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
    found: list[Any] = []
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
    if intersects is not None:
        shapely = import_optional("shapely.geometry", extra="geo")
        return shapely.shape(intersects)
    if bbox is None:
        return None
    return _lonlat_box(bbox)


def _lonlat_box(bbox: Sequence[float]) -> Any:
    """A lon/lat box; one that crosses the antimeridian (west > east, as STAC writes it) is
    the two boxes either side of 180 degrees."""
    shapely = import_optional("shapely.geometry", extra="geo")
    west, south, east, north = (float(v) for v in (*bbox[:2], *bbox[-2:]))
    if west <= east:
        return shapely.box(west, south, east, north)
    return shapely.MultiPolygon([shapely.box(west, south, 180.0, north),
                                 shapely.box(-180.0, south, east, north)])


def _footprint(item: Any) -> Any:
    shapely = import_optional("shapely.geometry", extra="geo")
    if item.geometry:
        return shapely.shape(item.geometry)
    return _lonlat_box(item.bbox)


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
    start: str | _datetime | None
    end: str | _datetime | None
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
    if start is not None:
        if last is None:
            raise _untimed(item)
        if not last >= start:
            return False
    if end is None:
        return True
    if first is None:
        raise _untimed(item)
    return first <= end


def _untimed(item: Any) -> StacError:
    return StacError(f"STAC item {item.id!r} has neither datetime nor start_datetime and "
                     "end_datetime to compare with the search's time window")


def _matches_query(properties: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    for name, conditions in query.items():
        value = properties.get(name)
        for op, expected in conditions.items():
            if op not in _QUERY_OPS:
                raise StacError(f"query operator {op!r} is not one of {sorted(_QUERY_OPS)}")
            if value is None or not _QUERY_OPS[op](value, expected):
                return False
    return True
