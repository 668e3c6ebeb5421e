"""A faulty S3 proxy on 127.0.0.1 in front of a real S3 server (moto), for fault tests.

It relays every request (GET, HEAD, PUT, POST, DELETE, bodies and headers as they are) to the
upstream server and can, on demand (the bookkeeping of :class:`tests.faulty_proxy.FaultyProxy`):

- answer the next ``count`` requests of a method under a path with an S3 error
  (``fail(count, 503, method="PUT", path="/bucket/store/")``: 503 ``SlowDown`` by default),
  then relay;
- wait before relaying the next ``count`` such requests (``delay(seconds, count, ...)``), so
  that a client whose read timeout is shorter gives up and retries.

Clients reach it with path-style addressing (``endpoint_url=proxy.url``: botocore's default
for an endpoint that is an IP address). Every request is recorded in ``requests``.
"""

from __future__ import annotations

import http.client
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from .faulty_proxy import FaultyProxy

__all__ = ["FaultyS3Proxy"]

_S3_ERRORS = {503: ("SlowDown", "Please reduce your request rate."),
              500: ("InternalError", "We encountered an internal error. Please try again.")}
_HOP_HEADERS = ("connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection")


class FaultyS3Proxy(FaultyProxy):
    """A threaded proxy on 127.0.0.1 relaying to an S3 server, injecting S3 errors and stalls.

    Faults are queued per ``"METHOD path-prefix"``: ``method=None`` matches every method.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.server.RequestHandlerClass = _S3Handler

    def fail(self, count: int, status: int = 503, *, path: str = "/",  # type: ignore[override]
             method: str | None = None) -> None:
        """Answer the next ``count`` matching requests with an S3 error, then relay."""
        super().fail(count, status, path=_pattern(method, path))

    def delay(self, seconds: float, count: int, *, path: str = "/",  # type: ignore[override]
              method: str | None = None) -> None:
        """Wait ``seconds`` before relaying each of the next ``count`` matching requests."""
        super().delay(seconds, count, path=_pattern(method, path))

    def relay_raw(self, method: str, path: str, headers: dict[str, str],
                  body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            connection.request(method, path, body=body if body else None, headers=headers)
            response = connection.getresponse()
            payload = b"" if method == "HEAD" else response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
            return response.status, kept, payload
        finally:
            connection.close()


def _pattern(method: str | None, path: str) -> str:
    return f"{method or '*'} {path}"


class _S3Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
        pass

    def do_GET(self) -> None:  # http.server calls them by these names
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _fault(self, proxy: FaultyS3Proxy) -> tuple[float, int | None]:
        """The first queued delay and error whose method and path prefix match."""
        with proxy.lock:
            wait = _take(proxy._delays, self.command, self.path, 0.0)
            status = _take(proxy._failures, self.command, self.path, None)
        return wait, status

    def _handle(self) -> None:
        proxy: FaultyS3Proxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        index = proxy.arrived(self.command, self.path)
        wait, status = self._fault(proxy)
        time.sleep(wait)
        if status is not None:
            code, message = _S3_ERRORS.get(status, ("InjectedFault", "injected by the test"))
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                       f"<Message>{message}</Message></Error>").encode()
            return self._answer(proxy, index, status,
                                [("Content-Type", "application/xml"),
                                 ("Content-Length", str(len(payload)))], payload)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            code, reply, payload = proxy.relay_raw(self.command, self.path, headers, body)
        except OSError:  # the upstream server is gone (the test is over)
            return self._answer(proxy, index, 502, [("Content-Length", "0")], b"")
        if not any(k.lower() == "content-length" for k, _ in reply):
            reply.append(("Content-Length", str(len(payload))))
        return self._answer(proxy, index, code, reply, payload)

    def _answer(self, proxy: FaultyS3Proxy, index: int, status: int,
                headers: list[tuple[str, str]], payload: bytes) -> None:
        proxy.answered(index, status)
        try:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            self.close_connection = True


def _take(faults: list[tuple[str, Any]], method: str, path: str, default: Any) -> Any:
    """Remove and return the first fault queued for ``method`` and a prefix of ``path``."""
    for position, (pattern, value) in enumerate(faults):
        wanted, prefix = pattern.split(" ", 1)
        if wanted in ("*", method) and path.startswith(prefix):
            del faults[position]
            return value
    return default
