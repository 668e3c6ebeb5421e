"""A real Dask cluster started from the command line: ``dask scheduler`` and N ``dask worker``.

Each process gets its own folder below ``folder`` (``scheduler/``, ``worker-0/``, ...) as its
working directory, ``HOME``, ``TMPDIR`` and Dask local directory, so the workers share no path
with each other or with the client: as on cloud VMs, what a worker caches (weights under
``~/.cache/xcloud``) or spills stays in its own folder. The client's own settings that point
at its paths (``XCLOUD_CACHE_DIR``, ``XDG_*``) are not passed on; ``env`` adds variables.

Leaving the context manager (also after an error) ends every process it started: SIGTERM to
each process group (a worker's nanny and its worker process), then SIGKILL after a grace
period. Each process's output is in ``<its folder>/log.txt``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = ["DaskCliCluster", "dask_program"]

_CLIENT_ONLY = ("XCLOUD_CACHE_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
                "DASK_CONFIG", "PYTEST_CURRENT_TEST")


def dask_program() -> str | None:
    """The ``dask`` command of this interpreter's environment (or on PATH)."""
    here = Path(sys.executable).parent / "dask"
    return str(here) if here.is_file() else shutil.which("dask")


class DaskCliCluster:
    """``dask scheduler`` + ``n_workers`` ``dask worker`` processes on 127.0.0.1."""

    def __init__(self, folder: str | os.PathLike[str], n_workers: int = 2, *,
                 nthreads: int = 1, env: Mapping[str, str] | None = None,
                 timeout: float = 60.0) -> None:
        program = dask_program()
        if program is None:
            raise RuntimeError("the dask command is not installed (pip install distributed)")
        self.program = program
        self.folder = Path(folder).resolve()
        self.n_workers, self.nthreads, self.timeout = n_workers, nthreads, timeout
        self.extra_env = dict(env or {})
        self.address = ""
        self.processes: list[subprocess.Popen] = []
        self.worker_dirs = [self.folder / f"worker-{k}" for k in range(n_workers)]

    def _environment(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CLIENT_ONLY}
        for sub in ("home", "tmp", "local"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        env.update(HOME=str(home / "home"), TMPDIR=str(home / "tmp"), OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1")
        env.update(self.extra_env)
        return env

    def _spawn(self, arguments: list[str], home: Path) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        log = open(home / "log.txt", "wb")  # noqa: SIM115 - the child keeps it; closed below
        try:
            process = subprocess.Popen([self.program, *arguments], cwd=home,
                                       env=self._environment(home), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        finally:
            log.close()
        self.processes.append(process)
        return process

    def start(self) -> DaskCliCluster:
        """Start the scheduler, then the workers; return once all workers have joined."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        home = self.folder / "scheduler"
        scheduler_file = home / "scheduler.json"
        scheduler = self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0",
                                 "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                home)
        deadline = time.monotonic() + self.timeout
        while not scheduler_file.is_file() or not scheduler_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {self.log(home)[-3000:]}")
            time.sleep(0.1)
        while True:  # the file may be half written
            with contextlib.suppress(ValueError):
                self.address = json.loads(scheduler_file.read_text())["address"]
                break
            time.sleep(0.05)
        for number, worker_dir in enumerate(self.worker_dirs):
            self._spawn(["worker", self.address, "--name", f"worker-{number}",
                         "--nthreads", str(self.nthreads), "--nworkers", "1",
                         "--host", "127.0.0.1", "--no-dashboard",
                         "--local-directory", str(worker_dir / "local")], worker_dir)
        self._wait_for_workers(deadline)

    def _wait_for_workers(self, deadline: float) -> None:
        from distributed import Client

        with Client(self.address, timeout=max(1.0, deadline - time.monotonic())) as client:
            while len(client.scheduler_info()["workers"]) < self.n_workers:
                dead = [p.args for p in self.processes if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    logs = "\n".join(self.log(d)[-2000:] for d in self.worker_dirs)
                    raise RuntimeError(f"dask workers did not join ({dead}): {logs}")
                time.sleep(0.1)

    @staticmethod
    def log(folder: Path) -> str:
        path = folder / "log.txt"
        return path.read_text(errors="replace") if path.is_file() else ""

    def stop(self, grace: float = 10.0) -> None:
        """End every process started (workers first), SIGKILL after ``grace`` seconds."""
        for process in reversed(self.processes):  # workers before the scheduler
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # the group: nanny and worker
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.processes.clear()

    def __enter__(self) -> DaskCliCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
