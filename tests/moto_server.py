"""moto's S3 server as a real subprocess on 127.0.0.1, for object-store tests.

``MotoServer().start()`` runs ``moto_server`` (installed with ``moto[server]``) on a free port
and waits until it answers; ``bucket(name)`` creates a bucket with boto3; ``options`` are the
``storage_options`` (s3fs) that reach it; ``stop()`` ends the process it started. Every test
gets its own buckets: ``unique_bucket()`` names one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["MotoServer", "MotoServerError", "free_port", "unique_bucket"]

KEY, SECRET, REGION = "xcloud-test-key", "xcloud-test-secret", "us-east-1"


class MotoServerError(RuntimeError):
    """moto_server is not installed or did not answer."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_bucket(prefix: str = "xcloud") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class MotoServer:
    """A ``moto_server`` process on 127.0.0.1 (S3 API at ``endpoint``)."""

    def __init__(self, log: Path | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = log

    @staticmethod
    def executable() -> str | None:
        here = Path(sys.executable).parent / "moto_server"
        return str(here) if here.is_file() else shutil.which("moto_server")

    def start(self, timeout: float = 30.0) -> MotoServer:
        program = self.executable()
        if program is None:
            raise MotoServerError("moto_server is not installed (pip install 'moto[server]')")
        output = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
        self.process = subprocess.Popen([program, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=output, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MotoServerError(f"moto_server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise MotoServerError(f"moto_server did not answer on port {self.port} in {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def options(self, endpoint: str | None = None, **extra: Any) -> dict[str, Any]:
        """s3fs ``storage_options`` for this server (or a proxy in front of it)."""
        return {"key": KEY, "secret": SECRET, "endpoint_url": endpoint or self.endpoint,
                "client_kwargs": {"region_name": REGION}, **extra}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name=REGION)

    def bucket(self, name: str | None = None) -> str:
        """Create a bucket (a new unique name by default) and return its name."""
        name = name or unique_bucket()
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` under ``prefix`` (boto3, no cache)."""
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                      for obj in page.get("Contents", ()))

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
