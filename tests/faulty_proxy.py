"""A faulty HTTP proxy on 127.0.0.1 in front of a real server, for fault-injection tests.

It relays every request to the upstream server (the test STAC API) and can, on demand:

- answer the next ``count`` requests with an HTTP error (``fail(count, status)``), then relay;
- wait before answering the next ``count`` requests (``delay(seconds, count)``), so that a
  client with a shorter timeout gives up;
- drop the connection in the middle of the next ``count`` answers (``drop(count,
  after_bytes)``): the upstream's status and headers (the full ``Content-Length``) go out,
  then only the first ``after_bytes`` bytes of the body, then the connection is closed, as when
  a network path fails mid-read (the paths dropped are kept in ``dropped``);
- break the paging of item searches (``paging = ...``):

  ``"repeat"``
      every page's ``next`` link asks for that same page again, forever;
  ``"same-items"``
      ``next`` links with ever new tokens that all answer the first page's items again;
  ``"404"``
      pages are relayed as they are, but a request for a following page (one with a paging
      ``token``) gets 404, as when the server has dropped its search state.

Every request it sees is recorded in ``requests`` (arrival time, method, path, and the status
it was answered with: 0 while unanswered, e.g. when the client gave up waiting), and its
headers in ``headers_seen``. ``HEAD``
requests are relayed with the upstream's ``Content-Length`` (byte-range clients such as GDAL's
``/vsicurl/`` ask for a file's size that way); ``Range`` headers are relayed as they come.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

__all__ = ["FaultyProxy", "Seen"]

PAGING_FAULTS = (None, "repeat", "same-items", "404")
_FAKE_TOKEN = "xcloud-fake-token"


@dataclass(frozen=True)
class Seen:
    """One request the proxy received (monotonic arrival time) and the status it answered."""

    time: float
    method: str
    path: str
    status: int


class FaultyProxy:
    """A threaded HTTP proxy on 127.0.0.1 that relays to ``upstream`` and injects faults.

    Use as a context manager; ``url`` is its root. Faults apply to requests arriving after
    they are set; ``reset()`` removes them all and forgets the recorded requests.
    """

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.prefix = parsed.path.rstrip("/")
        self.lock = threading.Lock()
        self.requests: list[Seen] = []
        self.paging: str | None = None
        self._failures: list[tuple[str, int]] = []
        self._delays: list[tuple[str, float]] = []
        self._drops: list[tuple[str, int]] = []
        self.dropped: list[str] = []
        self.headers_seen: list[tuple[str, str, dict[str, str]]] = []
        self._first_page: dict[str, Any] | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    # -- faults ---------------------------------------------------------------------------

    def fail(self, count: int, status: int = 503, *, path: str = "/") -> None:
        """Answer the next ``count`` requests for ``path...`` with ``status``, then relay."""
        with self.lock:
            self._failures += [(path, status)] * count

    def delay(self, seconds: float, count: int, *, path: str = "/") -> None:
        """Wait ``seconds`` before answering each of the next ``count`` requests for ``path...``."""
        with self.lock:
            self._delays += [(path, seconds)] * count

    def drop(self, count: int, after_bytes: int = 1024, *, path: str = "/") -> None:
        """Cut the next ``count`` GET answers for ``path...`` after ``after_bytes`` bytes of
        their body (headers announce the whole body), closing the connection."""
        with self.lock:
            self._drops += [(path, int(after_bytes))] * count

    def next_drop(self, path: str) -> int | None:
        """Bytes of body to send before dropping the answer to ``path`` (None: no drop)."""
        with self.lock:
            return _take(self._drops, path, None)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self._failures.clear()
            self._delays.clear()
            self._drops.clear()
            self.dropped.clear()
            self.headers_seen.clear()
            self.paging = None
            self._first_page = None

    def statuses(self) -> list[int]:
        with self.lock:
            return [seen.status for seen in self.requests]

    # -- used by the handler --------------------------------------------------------------

    def next_fault(self, path: str) -> tuple[float, int | None]:
        """The delay and the error status (None: relay) for a request for ``path``."""
        with self.lock:
            return _take(self._delays, path, 0.0), _take(self._failures, path, None)

    def arrived(self, method: str, path: str) -> int:
        with self.lock:
            self.requests.append(Seen(time.monotonic(), method, path, 0))
            return len(self.requests) - 1

    def saw_headers(self, method: str, path: str, headers: Any) -> None:
        """Keep the headers of a request (names in lower case) in ``headers_seen``."""
        with self.lock:
            self.headers_seen.append((method, path, {k.lower(): v for k, v in headers.items()}))

    def answered(self, index: int, status: int) -> None:
        with self.lock:
            if index < len(self.requests):  # not reset meanwhile
                self.requests[index] = replace(self.requests[index], status=status)

    def relay(self, method: str, path: str, headers: dict[str, str],
              body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            kept = {k: v for k, v in response.getheaders()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            return response.status, kept, payload
        finally:
            connection.close()

    def break_paging(self, method: str, path: str, body: bytes,
                     page: dict[str, Any]) -> dict[str, Any]:
        """The page with its ``next`` link replaced as ``paging`` says."""
        links = [link for link in page.get("links", []) if link.get("rel") != "next"]
        if self.paging == "repeat":
            again = {"rel": "next", "href": f"{self.url}{path[len(self.prefix):]}",
                     "method": method}
            if method == "POST":
                again["body"] = json.loads(body or b"{}")
            links.append(again)
        elif self.paging == "same-items":
            with self.lock:
                if self._first_page is None:
                    self._first_page = page
                page = self._first_page
                count = len(self.requests)
            links.append({"rel": "next", "method": "GET",
                          "href": f"{self.url}/search?{_FAKE_TOKEN}={count}"})
        return {**page, "links": links}


def _take(faults: list[tuple[str, Any]], path: str, default: Any) -> Any:
    """Remove and return the first fault queued for a prefix of ``path``."""
    for index, (prefix, value) in enumerate(faults):
        if path.startswith(prefix):
            del faults[index]
            return value
    return default


def _has_token(path: str, body: bytes) -> bool:
    if "token" in parse_qs(urlparse(path).query):
        return True
    try:
        return "token" in json.loads(body or b"{}")
    except (ValueError, TypeError):
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
        pass

    def do_GET(self) -> None:  # http.server calls it by this name
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        proxy: FaultyProxy = self.server.proxy  # type: ignore[attr-defined]
        self.index = proxy.arrived("HEAD", self.path)
        proxy.saw_headers("HEAD", self.path, self.headers)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("connection", "accept-encoding")}
        connection = http.client.HTTPConnection(*proxy.upstream, timeout=30)
        try:
            connection.request("HEAD", self.path, headers=headers)
            response = connection.getresponse()
            response.read()
            status, reply = response.status, response.getheaders()
        except OSError:
            status, reply = 502, []
        finally:
            connection.close()
        proxy.answered(self.index, status)
        try:
            self.send_response(status)
            for key, value in reply:
                if key.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _handle(self) -> None:
        proxy: FaultyProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.index = proxy.arrived(self.command, self.path)
        proxy.saw_headers(self.command, self.path, self.headers)
        wait, status = proxy.next_fault(self.path[len(proxy.prefix):])
        time.sleep(wait)
        if status is None and proxy.paging == "404" and _has_token(self.path, body):
            status = 404
        if status is not None:
            return self._answer(proxy, status, {"Content-Type": "application/json"},
                                json.dumps({"code": "Injected", "description": "fault"}).encode())
        if proxy.paging == "same-items" and _FAKE_TOKEN in self.path:
            page = proxy.break_paging(self.command, self.path, body, {})
            return self._answer(proxy, 200, {"Content-Type": "application/geo+json"},
                                json.dumps(page).encode())
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("connection", "accept-encoding")}
        try:
            code, reply_headers, payload = proxy.relay(self.command, self.path, headers, body)
        except OSError:  # the upstream server is gone (the test is over)
            return self._answer(proxy, 502, {}, b"")
        if proxy.paging in ("repeat", "same-items") and code == 200:
            payload = self._rewrite(proxy, body, payload)
        cut = proxy.next_drop(self.path[len(proxy.prefix):]) if self.command == "GET" else None
        if cut is not None and cut < len(payload):
            return self._answer_cut(proxy, code, reply_headers, payload, cut)
        return self._answer(proxy, code, reply_headers, payload)

    def _answer_cut(self, proxy: FaultyProxy, status: int, headers: dict[str, str],
                    payload: bytes, cut: int) -> None:
        """Announce the whole payload, send ``cut`` bytes of it, close the connection."""
        proxy.answered(self.index, status)
        with proxy.lock:
            proxy.dropped.append(self.path)
        self.close_connection = True
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # the client is gone already
            pass

    def _rewrite(self, proxy: FaultyProxy, body: bytes, payload: bytes) -> bytes:
        try:
            page = json.loads(payload)
        except ValueError:
            return payload
        if not isinstance(page, dict) or page.get("type") != "FeatureCollection":
            return payload
        return json.dumps(proxy.break_paging(self.command, self.path, body, page)).encode()

    def _answer(self, proxy: FaultyProxy, status: int, headers: dict[str, str],
                payload: bytes) -> None:
        proxy.answered(self.index, status)
        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            pass
