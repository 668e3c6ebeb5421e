"""A lease on a store: one writer at a time, and a crashed writer does not block forever.

The lease is the object ``.xcloud/lease.json`` inside the store::

    {"holder": "<uuid of this write>", "host": "...", "pid": 1234, "started": <pid start>,
     "created": "2026-...Z", "expires": "2026-...Z", "ttl": 60.0}

- **Taking it**: created only if absent (``If-None-Match: *`` on S3, ``O_EXCL`` on a local
  disk). If one is there and has not expired, the write is refused with
  :class:`StoreLockedError`, which names the store, the holder and the expiry.
- **Keeping it**: a daemon thread renews ``expires`` every third of ``ttl`` (``If-Match``
  on the ETag it last wrote, on S3). A writer that finds the lease taken over stops at its
  next batch of chunks with :class:`LeaseLostError`.
- **A stale lease** (expired, or held by a process of this host that has died) is taken
  over: first the object ``.xcloud/lease-takeover-<holder>`` is created (only if absent, so of
  two processes taking over one stale lease, one wins), then the lease is replaced (on S3
  only if its ETag is still the stale one).
- **Giving it back**: the lease object is deleted when the write ends (also on errors).

Expiry uses the wall clocks of the writers, so hosts writing one store need clocks within a
fraction of ``ttl`` (NTP). On stores without conditional replacement (not S3), the takeover of
a stale lease re-reads it just before replacing it: a holder that renews in that instant can be
overwritten; the renewal thread then reports the loss and that writer stops at its next batch.
A chunk task already running when a lease is lost (a writer stalled past ``ttl``) still
finishes writing its chunk: keep ``ttl`` well above the time of one batch of chunks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import LeaseLostError, StoreLockedError
from .store import StoreLocation

__all__ = ["DEFAULT_LEASE_TTL", "Lease", "LeaseLostError", "StoreLockedError", "hold_lease"]

DEFAULT_LEASE_TTL = 60.0
"""Seconds a lease lasts without renewal (renewed every third of it)."""

LEASE_KEY = ".xcloud/lease.json"
_TAKEOVER = ".xcloud/lease-takeover-{holder}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _stamp(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux ``/proc``), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _holder_dead(record: dict[str, Any]) -> bool:
    """True if the holder ran on this host and its process is gone (or a zombie)."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    pid = int(record["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    if _process_state(pid) == "Z":
        return True
    started = record.get("started")
    return started is not None and _process_start(pid) not in (None, started)


class Lease:
    """The lease of one write on one store; use :func:`hold_lease`."""

    def __init__(self, location: StoreLocation, ttl: float = DEFAULT_LEASE_TTL) -> None:
        if not ttl > 0:
            raise ValueError(f"lease_ttl must be > 0 seconds, got {ttl!r}")
        self.location = location
        self.ttl = float(ttl)
        self.holder = uuid.uuid4().hex
        self.created = _now()
        self.renewed = self.created
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(self) -> dict[str, Any]:
        """The lease object's content: holder, host, process and expiry."""
        pid = os.getpid()
        return {"holder": self.holder, "host": socket.gethostname(), "pid": pid,
                "started": _process_start(pid), "created": _stamp(self.created),
                "expires": _stamp(_now() + dt.timedelta(seconds=self.ttl)), "ttl": self.ttl}

    def _body(self) -> bytes:
        return json.dumps(self.record()).encode()

    def _current(self) -> tuple[dict[str, Any] | None, str | None]:
        etag = self.location.etag(LEASE_KEY)
        raw = self.location.read(LEASE_KEY)
        if raw is None:
            return None, None
        try:
            return json.loads(raw), etag
        except ValueError:  # never written half (one PUT / a rename), but be safe
            return {"holder": "?", "expires": _stamp(_now())}, etag

    def acquire(self) -> None:
        """Take the lease, or raise :class:`StoreLockedError`."""
        for _ in range(5):
            if self.location.create(LEASE_KEY, self._body()):
                self.etag = self.location.etag(LEASE_KEY)
                return
            current, etag = self._current()
            if current is None:  # given back meanwhile: try again
                continue
            expired = _parse(str(current.get("expires"))) <= _now()
            if not (expired or _holder_dead(current)):
                raise StoreLockedError(self.location.url, current)
            if self._take_over(current, etag):
                return
        raise StoreLockedError(self.location.url, self._current()[0] or {})

    def _take_over(self, stale: dict[str, Any], etag: str | None) -> bool:
        claim = _TAKEOVER.format(holder=stale.get("holder", "unknown"))
        if not self.location.create(claim, self._body()):
            again, _ = self._current()
            if again is not None:
                raise StoreLockedError(self.location.url, again)
            return False
        self._claim = claim
        again, etag_again = self._current()
        if again is None or again.get("holder") != stale.get("holder"):
            return False
        if not self.location.replace(LEASE_KEY, self._body(), etag_again or etag):
            return False
        self.etag = self.location.etag(LEASE_KEY)
        return True

    def renew(self) -> None:
        """Push ``expires`` forward; records the loss if another job holds the lease now."""
        with self._lock:
            current, etag = self._current()
            if current is None or current.get("holder") != self.holder:
                self.lost = (f"the lease on {self.location.url} was taken over by "
                             f"{(current or {}).get('holder', 'nobody (it was deleted)')}")
                return
            if self.location.replace(LEASE_KEY, self._body(), etag):
                self.etag = self.location.etag(LEASE_KEY)
                self.renewed = _now()
            else:
                self.lost = f"the lease on {self.location.url} changed while being renewed"

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost."""
        if self.lost:
            raise LeaseLostError(f"{self.lost}; this write stopped so that two jobs never "
                                 "mix their chunks. Run it again when the other job is done.")

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception as error:  # the next renewal tries again
                if _now() >= self.renewed + dt.timedelta(seconds=self.ttl) and self.lost is None:
                    self.lost = f"the lease on {self.location.url} could not be renewed: {error}"
            if self.lost:
                return

    def start(self) -> None:
        """Start renewing the lease in a daemon thread."""
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"xcloud-lease-{self.holder[:8]}")
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and delete the lease (if still ours) and the takeover claim."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        with self._lock:
            current, _ = self._current()
            if current is not None and current.get("holder") == self.holder:
                self.location.delete(LEASE_KEY)
            claim = getattr(self, "_claim", None)
            if claim:
                self.location.delete(claim)
            self.location.remove_empty(".xcloud")


@contextmanager
def hold_lease(location: StoreLocation, ttl: float = DEFAULT_LEASE_TTL) -> Iterator[Lease]:
    """Hold the lease of ``location`` while the block runs (renewed in the background).

    Raises
    ------
    StoreLockedError
        Another job holds an unexpired lease on the store.
    """
    lease = Lease(location, ttl)
    lease.acquire()
    lease.start()
    try:
        yield lease
    finally:
        lease.release()
