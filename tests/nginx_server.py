"""A real nginx on 127.0.0.1 serving a folder, with byte ranges, for tests and benchmarks.

``NginxServer(root, folder)`` writes a configuration into ``folder`` (its pid file, error log,
access log and temporary paths all live there), starts ``nginx -p folder -c nginx.conf`` in
the foreground on a free port and waits until it answers. Range requests are on (nginx's
static file module answers ``Range: bytes=a-b`` with ``206 Partial Content``). Every request is
logged to ``access.log`` as one tab-separated line (method, path, status, body bytes sent,
Range header), parsed by :meth:`NginxServer.requests`.

Used as a context manager; leaving it (also after an error) stops nginx (SIGQUIT, then SIGKILL
of its process group). ``NGINX`` names the program (default ``nginx`` on PATH, else
``/usr/sbin/nginx``).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LoggedRequest", "NginxServer", "nginx_binary", "nginx_unavailable_reason"]

_LOG_FORMAT = "xcloud_tsv"
_START_TIMEOUT_S = 10.0


def nginx_binary() -> str | None:
    """The nginx program: ``$NGINX``, nginx on PATH, or /usr/sbin/nginx; None if none."""
    for candidate in (os.environ.get("NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_unavailable_reason() -> str | None:
    """Why nginx cannot run here (None: it can)."""
    if nginx_binary() is None:
        return "nginx is not installed (apt-get install nginx-light, or set $NGINX)"
    return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LoggedRequest:
    """One line of the access log."""

    method: str
    path: str
    status: int
    bytes_sent: int
    range: str

    @property
    def ranged(self) -> bool:
        """Whether the client asked for a byte range."""
        return self.range not in ("", "-")


def _config(folder: Path, root: Path, port: int) -> str:
    user = ""
    if os.geteuid() == 0:  # the workers would switch to nobody, who cannot read tmp folders
        user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                f"{grp.getgrgid(os.getegid()).gr_name};")
    temp = folder / "temp"
    return f"""\
{user}
worker_processes 2;
daemon off;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    log_format {_LOG_FORMAT} '$request_method\\t$uri\\t$status\\t$body_bytes_sent\\t$http_range';
    access_log {folder / "access.log"} {_LOG_FORMAT};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    types {{ image/jp2 jp2; image/tiff tif; application/json json; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 30;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        max_ranges 64;
        location / {{ autoindex off; }}
    }}
}}
"""


class NginxServer:
    """nginx serving ``root`` on 127.0.0.1; its files (config, logs, pid) in ``folder``."""

    def __init__(self, root: str | os.PathLike[str], folder: str | os.PathLike[str]) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError(nginx_unavailable_reason())
        self.binary = binary
        self.root = Path(os.path.abspath(root))
        self.folder = Path(folder).resolve()
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's root URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.folder / "access.log"

    @property
    def error_log(self) -> Path:
        return self.folder / "error.log"

    def url_of(self, path: str | os.PathLike[str]) -> str:
        """The URL of a file below ``root``."""
        relative = Path(os.path.abspath(path)).relative_to(self.root)  # links stay links
        return f"{self.url}/{relative.as_posix()}"

    def start(self) -> NginxServer:
        """Write the configuration, start nginx and wait until it accepts connections."""
        (self.folder / "temp").mkdir(parents=True, exist_ok=True)
        for attempt in range(5):  # a port taken between free_port() and nginx's bind: retry
            self.port = free_port()
            config = self.folder / "nginx.conf"
            config.write_text(_config(self.folder, self.root, self.port))
            self.process = subprocess.Popen(
                [self.binary, "-p", str(self.folder), "-c", str(config), "-e",
                 str(self.error_log)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True)
            if self._wait_ready():
                return self
            error = self._stop_process()
            if attempt == 4 or "Address already in use" not in error:
                raise RuntimeError(f"nginx did not start: {error.strip()[-2000:]}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                return True
            time.sleep(0.05)
        return False

    def _stop_process(self) -> str:
        process, self.process = self.process, None
        if process is None:
            return ""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGQUIT)  # graceful: finish the open requests
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        error = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        if self.error_log.is_file():
            error += self.error_log.read_text(errors="replace")
        return error

    def stop(self) -> None:
        """Stop nginx (its files stay in ``folder``)."""
        self._stop_process()

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def requests(self, path_part: str = "") -> list[LoggedRequest]:
        """The requests logged so far whose path contains ``path_part``.

        nginx writes a line once a response is complete; call after the client is done.
        """
        if not self.access_log.is_file():
            return []
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) != 5 or path_part not in fields[1]:
                continue
            method, path, status, sent, ranged = fields
            found.append(LoggedRequest(method, path, int(status), int(sent), ranged))
        return found

    def clear_log(self) -> None:
        """Forget the requests logged so far (nginx keeps appending to the same file)."""
        if self.access_log.is_file():
            with open(self.access_log, "r+") as handle:
                handle.truncate(0)
