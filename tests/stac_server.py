"""A real STAC API server on 127.0.0.1 for the tests: stac-fastapi-pgstac on a throwaway PostgreSQL.

The server is not a mock: a PostgreSQL cluster (with PostGIS) is created in a temporary folder,
pgstac's schema is migrated into it, and ``uvicorn stac_fastapi.pgstac.app:create_app --factory``
serves it on a free port of 127.0.0.1. pystac-client then talks HTTP to it like to Earth Search.

stac-fastapi-pgstac lives in its own virtual environment (it pins packages the main environment
needs at other versions): ``$XCLOUD_STAC_SERVER_PYTHON``, else ``<repo>/.stac-venv/bin/python``.
PostgreSQL's programs come from ``$XCLOUD_PG_BIN``, else ``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin``. PostgreSQL refuses to run as root; as root the cluster is run as
the ``postgres`` system user.

Examples
--------
>>> with StacApiServer() as server:  # doctest: +SKIP
...     server.ingest([collection], items)
...     client = pystac_client.Client.open(server.url)
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import glob
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_PYTHON_ENV = "XCLOUD_STAC_SERVER_PYTHON"
PG_BIN_ENV = "XCLOUD_PG_BIN"
REQUIRE_ENV = "XCLOUD_REQUIRE_STAC_SERVER"
SERVER_MODULES = ("stac_fastapi.pgstac", "pypgstac", "uvicorn", "psycopg")
PG_PROGRAMS = ("initdb", "postgres", "pg_isready")
PG_SYSTEM_USER = "postgres"

# Runs in the server's environment (pypgstac is not installed in the main one). The payload comes
# on stdin as dicts: given a file, pypgstac's reader rewrites backslashes in every line.
_INGEST_SCRIPT = """
import json, sys
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods
payload = json.load(sys.stdin)
with PgstacDB(dsn=sys.argv[1]) as db:
    loader = Loader(db=db)
    if payload["collections"]:
        loader.load_collections(iter(payload["collections"]), Methods.upsert)
    if payload["items"]:
        loader.load_items(iter(payload["items"]), Methods.upsert)
"""


class StacApiServerError(RuntimeError):
    """The STAC API server could not be started or could not take data."""


def server_required() -> bool:
    """Whether tests must fail, not skip, when the server cannot start.

    Returns
    -------
    bool
        True when ``$XCLOUD_REQUIRE_STAC_SERVER`` is ``1`` (CI sets it).
    """
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in {"1", "true", "yes"}


def find_server_python() -> Path | None:
    """The Python of the server's virtual environment, if there is one.

    Returns
    -------
    pathlib.Path or None
        ``$XCLOUD_STAC_SERVER_PYTHON`` when set (even if missing, so that a wrong setting is
        reported, not replaced), else ``<repo>/.stac-venv/bin/python`` when it exists.
    """
    configured = os.environ.get(SERVER_PYTHON_ENV)
    if configured:
        return Path(configured)
    default = REPO_ROOT / ".stac-venv" / "bin" / "python"
    return default if default.exists() else None


def _has_pg_programs(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in PG_PROGRAMS)


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/bin$", path)
    return tuple(int(p) for p in match.group(1).split(".") if p) if match else (0,)


def find_pg_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (``initdb``, ``postgres``, ``pg_isready``).

    Returns
    -------
    pathlib.Path or None
        ``$XCLOUD_PG_BIN`` when set, else ``pg_config --bindir``, else the newest
        ``/usr/lib/postgresql/*/bin`` (Debian's layout), else the folder of ``initdb`` on
        ``PATH``; None when none of them holds the programs.
    """
    configured = os.environ.get(PG_BIN_ENV)
    if configured:
        return Path(configured) if _has_pg_programs(Path(configured)) else None
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                           key=_version_key, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    return next((c for c in candidates if _has_pg_programs(c)), None)


def find_pg_sharedir(bindir: Path) -> Path | None:
    """The share folder (with ``extension/``) of the PostgreSQL whose programs are in bindir.

    Parameters
    ----------
    bindir : pathlib.Path
        Folder of ``postgres``.

    Returns
    -------
    pathlib.Path or None
        The first of ``<bindir>/pg_config --sharedir``, Debian's ``/usr/share/postgresql/<major>``,
        ``<bindir>/../share/postgresql`` and ``<bindir>/../share`` that has ``extension/``.
    """
    candidates: list[Path] = []
    if os.access(bindir / "pg_config", os.X_OK):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
        match = re.search(r"(\d+)(?:\.\d+)?", version)
        if match:
            candidates.append(Path("/usr/share/postgresql") / match.group(1))
    candidates += [bindir.parent / "share" / "postgresql", bindir.parent / "share"]
    return next((c for c in candidates if (c / "extension").is_dir()), None)


def _missing_modules(python: Path) -> list[str]:
    check = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
             "if importlib.util.find_spec(m) is None))")
    try:
        out = subprocess.run([str(python), "-c", check, *SERVER_MODULES], capture_output=True,
                             text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"(cannot run {python}: {exc})"]
    return out.stdout.split()


def server_unavailable_reason() -> str | None:
    """Why the test STAC API server cannot start here, or None when it can.

    Returns
    -------
    str or None
        A sentence for ``pytest.skip``: no server environment, no PostgreSQL programs, no PostGIS
        extension, or root without a ``postgres`` user to run PostgreSQL as.
    """
    hint = "(see docs/testing.md; `bash .ci/run` installs it)"
    python = find_server_python()
    if python is None:
        return (f"no STAC server environment: set {SERVER_PYTHON_ENV} or create "
                f"{REPO_ROOT / '.stac-venv'} {hint}")
    if not python.exists():
        return f"{SERVER_PYTHON_ENV}={python} does not exist {hint}"
    missing = _missing_modules(python)
    if missing:
        return f"the STAC server environment {python} lacks {', '.join(missing)} {hint}"
    bindir = find_pg_bindir()
    if bindir is None:
        where = os.environ.get(PG_BIN_ENV) or "pg_config --bindir, /usr/lib/postgresql/*/bin, PATH"
        return f"no PostgreSQL server programs ({', '.join(PG_PROGRAMS)}) in {where} {hint}"
    sharedir = find_pg_sharedir(bindir)
    if sharedir is None or not (sharedir / "extension" / "postgis.control").exists():
        return (f"the PostgreSQL in {bindir} has no PostGIS extension "
                f"(Debian: apt-get install postgresql-<major>-postgis-3) {hint}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            return f"running as root and there is no '{PG_SYSTEM_USER}' user to run PostgreSQL as"
    return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now.

    Returns
    -------
    int
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _parse_datetime(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _format_datetime(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def collection_for_items(collection_id: str, items: Sequence[Mapping[str, Any]],
                         **extra: Any) -> dict[str, Any]:
    """A minimal valid STAC Collection whose extent covers the items.

    Parameters
    ----------
    collection_id : str
        The collection's id (the items' ``collection``).
    items : sequence of dict
        STAC items (with ``bbox`` and ``properties.datetime`` or ``start_/end_datetime``).
    **extra
        More top-level fields (``item_assets``, ``summaries``, ...).

    Returns
    -------
    dict
        The collection: spatial extent the union of the items' bboxes, temporal extent from the
        earliest to the latest datetime.
    """
    if not items:
        raise ValueError("a collection for no items has no extent")
    boxes = [item["bbox"] for item in items]
    times = []
    for item in items:
        props = item["properties"]
        times += [_parse_datetime(props[key]) for key in ("datetime", "start_datetime",
                                                          "end_datetime") if props.get(key)]
    bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes)]
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection_id,
        "description": f"{collection_id} (test collection)",
        "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[_format_datetime(min(times)),
                                       _format_datetime(max(times))]]},
        },
        **extra,
    }


class StacApiServer:
    """stac-fastapi-pgstac on a throwaway PostgreSQL cluster, both on 127.0.0.1.

    Use it as a context manager: entering starts PostgreSQL, migrates pgstac and starts uvicorn,
    then waits until the landing page answers; leaving (also after an error) stops both and
    removes the temporary folder.

    Parameters
    ----------
    server_python : str or pathlib.Path, optional
        Python of the environment with stac-fastapi-pgstac, pypgstac and uvicorn; default
        :func:`find_server_python`.
    pg_bindir : str or pathlib.Path, optional
        Folder of ``initdb``/``postgres``/``pg_isready``; default :func:`find_pg_bindir`.
    timeout : float
        Seconds to wait for each of PostgreSQL and the API to answer.

    Attributes
    ----------
    url : str
        The API root, ``http://127.0.0.1:<port>`` (set once started).
    dsn : str
        The database's connection string (set once started).
    """

    def __init__(self, server_python: str | Path | None = None,
                 pg_bindir: str | Path | None = None, timeout: float = 60.0) -> None:
        python = Path(server_python) if server_python else find_server_python()
        bindir = Path(pg_bindir) if pg_bindir else find_pg_bindir()
        if python is None or bindir is None:
            raise StacApiServerError(server_unavailable_reason() or "server not available")
        self.server_python = python
        self.pg_bindir = bindir
        self.timeout = timeout
        self.url = ""
        self.dsn = ""
        self.tmpdir: Path | None = None
        self._postgres: subprocess.Popen[bytes] | None = None
        self._api: subprocess.Popen[bytes] | None = None
        self._pg: dict[str, str] = {}
        self._run_as: str | None = PG_SYSTEM_USER if os.geteuid() == 0 else None

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> StacApiServer:
        """Start the server (see :meth:`start`)."""
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop the server (see :meth:`stop`)."""
        self.stop()

    def start(self) -> StacApiServer:
        """Create the cluster, migrate pgstac, start the API and wait until it answers.

        Returns
        -------
        StacApiServer
            self, started.

        Raises
        ------
        StacApiServerError
            When a step fails; the message carries the step's log. Whatever had started is
            stopped again.
        """
        if self.tmpdir is not None:
            raise StacApiServerError("this server is already started")
        self.tmpdir = Path(tempfile.mkdtemp(prefix="xcloud-stac-"))
        atexit.register(self.stop)
        try:
            self._start_postgres()
            self._migrate()
            self._start_api()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop uvicorn and PostgreSQL (fast shutdown) and remove the temporary folder.

        Safe to call more than once and on a partly started server.
        """
        if self._api is not None:
            _terminate(self._api, signal.SIGTERM)
            self._api = None
        if self._postgres is not None:
            # SIGINT is PostgreSQL's "fast" shutdown, what ``pg_ctl stop -m fast`` sends.
            _terminate(self._postgres, signal.SIGINT)
            self._postgres = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        atexit.unregister(self.stop)

    @property
    def running(self) -> bool:
        """Whether both the database and the API processes are alive."""
        return all(p is not None and p.poll() is None for p in (self._postgres, self._api))

    @property
    def pids(self) -> list[int]:
        """Process ids of the PostgreSQL postmaster and of uvicorn (for checks and debugging)."""
        return [p.pid for p in (self._postgres, self._api) if p is not None]

    # -- data ---------------------------------------------------------------------------------

    def ingest(self, collections: Iterable[Mapping[str, Any]] = (),
               items: Iterable[Mapping[str, Any]] = ()) -> None:
        """Insert or replace collections and items (pypgstac's loader, ``upsert``).

        Parameters
        ----------
        collections : iterable of dict
            STAC Collections; loaded first, so items may belong to them.
        items : iterable of dict
            STAC Items (with ``collection``, ``geometry`` and a datetime); their collection must
            exist, in this call or an earlier one. Asset hrefs are served back as given: use
            absolute ``file://`` URIs for local files.

        Raises
        ------
        StacApiServerError
            When pypgstac rejects the data; the message carries its error.
        """
        if not self.dsn:
            raise StacApiServerError("start the server before ingesting")
        payload = json.dumps({"collections": [dict(c) for c in collections],
                              "items": [dict(i) for i in items]})
        try:
            result = subprocess.run([str(self.server_python), "-c", _INGEST_SCRIPT, self.dsn],
                                    input=payload, capture_output=True, text=True,
                                    timeout=max(self.timeout, 120), env=self._env())
        except subprocess.TimeoutExpired as exc:
            raise StacApiServerError(f"ingesting timed out after {exc.timeout} s") from exc
        if result.returncode != 0:
            raise StacApiServerError(f"pypgstac could not load the data:\n{result.stderr[-4000:]}")

    # -- steps --------------------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        """A small environment: the caller's settings must not reconfigure the server."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra)
        return env

    def _pg_run(self, args: list[str], log: Path) -> None:
        with log.open("ab") as out:
            result = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmpdir,
                                    env=self._env(LC_ALL="C"), timeout=self.timeout,
                                    **self._user_kwargs())
        if result.returncode != 0:
            raise StacApiServerError(f"{Path(args[0]).name} failed ({result.returncode}):\n"
                                     f"{_tail(log)}")

    def _user_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as, "group": pwd.getpwnam(self._run_as).pw_gid,
                "extra_groups": []}

    def _start_postgres(self) -> None:
        assert self.tmpdir is not None
        tmp = self.tmpdir
        password = secrets.token_hex(16)
        user = "stac"
        (tmp / "pwfile").write_text(password + "\n")
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            for path in (tmp, tmp / "pwfile"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        log = tmp / "postgres.log"
        self._pg_run([str(self.pg_bindir / "initdb"), "-D", str(tmp / "data"),
                      f"--username={user}", f"--pwfile={tmp / 'pwfile'}",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
                      "--locale=C", "--no-sync", "--no-instructions"], log)
        port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(tmp),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "40",
            "shared_buffers": "32MB",
            # pgstac reads its settings from these GUCs: count matches like Earth Search does
            "pgstac.context": "on",
        }
        args = [str(self.pg_bindir / "postgres"), "-D", str(tmp / "data")]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        with log.open("ab") as out:
            self._postgres = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                              cwd=tmp, env=self._env(LC_ALL="C"),
                                              start_new_session=True, **self._user_kwargs())
        ready = [str(self.pg_bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port),
                 "-U", user, "-d", "postgres"]
        deadline = time.monotonic() + self.timeout
        while subprocess.run(ready, env=self._env(), check=False).returncode != 0:
            if self._postgres.poll() is not None:
                raise StacApiServerError(f"PostgreSQL exited ({self._postgres.returncode}):\n"
                                         f"{_tail(log)}")
            if time.monotonic() > deadline:
                raise StacApiServerError(f"PostgreSQL did not answer in {self.timeout} s:\n"
                                         f"{_tail(log)}")
            time.sleep(0.05)
        self._pg = {"PGUSER": user, "PGPASSWORD": password, "PGHOST": "127.0.0.1",
                    "PGPORT": str(port), "PGDATABASE": "postgres"}
        self.dsn = f"postgresql://{user}:{password}@127.0.0.1:{port}/postgres"

    def _migrate(self) -> None:
        assert self.tmpdir is not None
        log = self.tmpdir / "migrate.log"
        with log.open("wb") as out:
            result = subprocess.run(
                [str(self.server_python), "-m", "pypgstac.pypgstac", "migrate", "--dsn", self.dsn],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.tmpdir, env=self._env(),
                timeout=max(self.timeout, 120), check=False)
        if result.returncode != 0:
            raise StacApiServerError(f"pypgstac migrate failed ({result.returncode}):\n"
                                     f"{_tail(log)}\n--- postgres.log ---\n"
                                     f"{_tail(self.tmpdir / 'postgres.log', 15)}")

    def _start_api(self) -> None:
        assert self.tmpdir is not None
        log = self.tmpdir / "uvicorn.log"
        port = free_port()
        env = self._env(**self._pg, DB_MIN_CONN_SIZE="1", DB_MAX_CONN_SIZE="4",
                        ENABLE_TRANSACTIONS_EXTENSIONS="false")
        args = [str(self.server_python), "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app",
                "--factory", "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
        with log.open("wb") as out:
            # cwd is the temporary folder: pydantic-settings would read a stray ``.env`` file.
            self._api = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.tmpdir, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.timeout
        while True:
            if self._api.poll() is not None:
                raise StacApiServerError(f"the STAC API exited ({self._api.returncode}):\n"
                                         f"{_tail(log)}")
            try:
                with urllib.request.urlopen(url + "/", timeout=5) as response:
                    if response.status == 200 and json.load(response).get("type") == "Catalog":
                        break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise StacApiServerError(f"the STAC API did not answer at {url} in "
                                         f"{self.timeout} s:\n{_tail(log)}")
            time.sleep(0.05)
        self.url = url

    def __repr__(self) -> str:
        """Where the server is, or that it is stopped."""
        return f"StacApiServer({self.url or 'stopped'})"


def _terminate(proc: subprocess.Popen[bytes], sig: signal.Signals, wait: float = 15.0) -> None:
    """Signal a process started in its own session and wait; kill its whole group if it hangs."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        # The group also holds PostgreSQL's backends (or uvicorn's children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


if __name__ == "__main__":  # manual check: python -m tests.stac_server
    reason = server_unavailable_reason()
    if reason:
        sys.exit(reason)
    started = time.perf_counter()
    with StacApiServer() as server:
        print(f"{server.url} up in {time.perf_counter() - started:.1f} s; pids {server.pids}")
