"""Fetch the published weights into a per-user cache, verified before anything reads them.

The cache is ``platformdirs.user_cache_dir("xcloud")/weights`` (``~/.cache/xcloud/weights`` on
Linux), or ``$XCLOUD_CACHE_DIR``, or ``cache_dir=``: the same path in every process of a user
on a machine, so all the Dask workers of a node share one copy. Each artifact keeps the
authors' layout below its folder (``sensei-v2/full-models/<name>/weights.pt``,
``sensei-v2/sensei-configs/senseiv2-medium.yaml``, ``cloudsen12/UNetMobV2_V2.pt``, ...).

A download goes to a temporary file beside its destination (pooch), is checked against the
published sha256 and size *before* it is moved into place, and is moved atomically; a
cross-process lock (filelock) per file makes concurrent fetches of one file end with one
verified copy. Where no sha256 is published, the first download records the file's sha256 in
``<file>.sha256`` (trust on first use) and every later use is checked against that record.

``$XCLOUD_WEIGHTS_URL`` or ``base_url=`` replaces the scheme and host of every URL (keeping the
path), for a mirror inside an air-gapped site. Without a network, put the files where
:func:`cache_dir` and ``xcloud weights list -v`` say, or pass ``weights=PATH`` to the model.

Weights at a URL (``weights="https://..."``, ``"s3://bucket/key"``, any fsspec URL): each
process that loads the model fetches the file once into its own cache
(:func:`fetch_url_weights`, below ``<cache>/urls/``), so Dask workers that share no disk each
get a copy, and workers of one machine that share a cache share one. The file is checked
against a sha256 before it is moved into place when one is known: given (``sha256=``, or a
``#sha256=<hex>`` fragment of the URL), or published for the model under the same file name;
otherwise the first download's sha256 is recorded and later uses are checked against it. The
model's own loader then reads the local copy (safetensors, ``weights_only=True``, HDF5, ONNX:
never unpickled). The download goes through fsspec (its HTTP filesystem for ``https://``,
``s3fs`` for ``s3://``: ``endpoint_url``, ``anon``, ``requester_pays``, credentials), into a
temporary file beside the destination, moved into place once its hash checks. Options for a
URL can be registered once per process with :func:`register_url_options` (xcloud's pipeline
does it on every Dask worker), so that they never need to travel with the model's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from .._optional import import_optional
from .._paths import safe_name
from ..errors import MissingWeightsError, WeightsError, XcloudError
from .published import PublishedFile, PublishedWeights, published

__all__ = [
    "BASE_URL_ENV",
    "CACHE_ENV",
    "FileCheck",
    "cache_dir",
    "cached_weights",
    "expected_url_sha256",
    "fetch_url_weights",
    "fetch_weights",
    "file_sha256",
    "is_weights_url",
    "local_path",
    "mirror_url",
    "register_url_options",
    "resolve_weights",
    "url_cache_path",
    "url_options",
    "verify_weights",
]

CACHE_ENV = "XCLOUD_CACHE_DIR"
BASE_URL_ENV = "XCLOUD_WEIGHTS_URL"
RETRIES_ENV = "XCLOUD_WEIGHTS_RETRIES"
_EXTRA = "fetch"
_RECORD_SUFFIX = ".sha256"
_LOCK_SUFFIX = ".lock"
_TIMEOUT_S = 60
# the sensei config a SEnSeI-v2 config.yaml names, e.g. SEnSeIv2: 'hf_models/sensei-configs/x.yaml'
_SENSEI_LINE = re.compile(r"""^SEnSeIv2\s*:\s*['"]?([^'"#\s]+)""", re.MULTILINE)


@dataclass(frozen=True)
class FileCheck:
    """The state of one cached file.

    ``status`` is ``verified`` (matches the published sha256), ``recorded`` (matches the sha256
    recorded at its first download; none is published), ``unrecorded`` (present, nothing to
    compare with), ``missing`` or ``mismatch``.
    """

    artifact: str
    filename: str
    path: Path
    status: str
    expected: str | None = None
    actual: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the file is there and nothing contradicts it."""
        return self.status in ("verified", "recorded", "unrecorded")


def cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The weights cache: ``cache_dir``, else ``$XCLOUD_CACHE_DIR``, else the per-user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    platformdirs = import_optional("platformdirs", extra=_EXTRA)
    return Path(platformdirs.user_cache_dir("xcloud")) / "weights"


def mirror_url(url: str, base_url: str | None = None) -> str:
    """``url`` with its scheme and host replaced by ``base_url`` (or ``$XCLOUD_WEIGHTS_URL``).

    >>> mirror_url("https://huggingface.co/a/b/resolve/main/w.pt", "http://10.0.0.5:8000/m")
    'http://10.0.0.5:8000/m/a/b/resolve/main/w.pt'
    """
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    if not base:
        return url
    if urlsplit(base).scheme not in ("http", "https"):
        raise WeightsError(f"base_url={base!r} (or ${BASE_URL_ENV}) must be an http(s) URL such "
                           "as http://mirror.example:8000/weights")
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return base.rstrip("/") + path


def local_path(entry: PublishedWeights, file: PublishedFile | None = None, *,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``file`` of ``entry`` (or what :func:`fetch_weights` returns for it) is cached."""
    root = _cache_root(cache_dir) / entry.subdir
    return root.joinpath(*(file.filename if file else entry.main).split("/"))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_weights(name_or_model: str, *, cache_dir: str | os.PathLike | None = None,
                  base_url: str | None = None, progress: bool = False,
                  retries: int | None = None) -> Path:
    """The local copy of the published weights ``name_or_model``, downloaded if needed.

    Parameters
    ----------
    name_or_model
        An artifact name (``xcloud weights list``) or a model name (its default artifact).
    cache_dir
        The cache folder (default :func:`cache_dir`).
    base_url
        A mirror that replaces the scheme and host of the published URLs (default
        ``$XCLOUD_WEIGHTS_URL``).
    progress
        Show a progress bar (needs tqdm).
    retries
        Extra download attempts after a failure (default ``$XCLOUD_WEIGHTS_RETRIES`` or 2).

    Returns
    -------
    Path
        The weights file, or for a multi-file artifact (SEnSeI-v2) the model's folder laid out
        as the authors publish it (``.../sensei-v2/full-models/<name>``, with the sensei
        config in ``.../sensei-v2/sensei-configs``).

    Raises
    ------
    MissingWeightsError
        A file could not be downloaded (offline, HTTP error): the message names each file, its
        URL and where to put it.
    WeightsError
        A file does not match its published or recorded sha256 or size; it is removed.
    """
    entry = published(name_or_model)
    root = _cache_root(cache_dir)
    missing: list[tuple[PublishedFile, str, str]] = []
    files = list(entry.files)
    for file in files:
        _fetch_one(entry, file, root, base_url, progress, retries, missing)
    for extra in _named_extras(entry, root, files):
        _fetch_one(entry, extra, root, base_url, progress, retries, missing)
    if missing:
        raise MissingWeightsError(_missing_message(entry, root, missing))
    return local_path(entry, cache_dir=root)


def cached_weights(name_or_model: str, *,
                   cache_dir: str | os.PathLike | None = None) -> Path | None:
    """What :func:`fetch_weights` would return, if every file is cached and checks; else None.

    Never downloads. A file whose sha256 is neither published nor recorded (placed by hand for
    offline use) is recorded now. Raises :class:`WeightsError` if a file contradicts its hash.
    """
    entry = published(name_or_model)
    root = _cache_root(cache_dir)
    files = list(entry.files)
    for file in [*files, *_named_extras(entry, root, files)]:
        path = local_path(entry, file, cache_dir=root)
        if not path.is_file():
            return None
        with _file_lock(path):
            _check_cached(entry, file, path)
    return local_path(entry, cache_dir=root)


def verify_weights(name_or_model: str | None = None, *,
                   cache_dir: str | os.PathLike | None = None) -> list[FileCheck]:
    """Check the cached files of one artifact (or of all) against their sha256; read-only."""
    from .published import PUBLISHED

    root = _cache_root(cache_dir)
    entries = [published(name_or_model)] if name_or_model else list(PUBLISHED.values())
    checks = []
    for entry in entries:
        files = list(entry.files)
        for file in [*files, *_named_extras(entry, root, files)]:
            checks.append(_check(entry, file, local_path(entry, file, cache_dir=root)))
    return checks


def resolve_weights(model: str, weights: str | os.PathLike | None, *,
                    cache_dir: str | os.PathLike | None = None,
                    base_url: str | None = None,
                    storage_options: Mapping[str, Any] | None = None,
                    sha256: str | None = None) -> Path | None:
    """The weights a model loader should read.

    ``weights`` a URL (:func:`is_weights_url`): the file fetched into this process's cache
    (:func:`fetch_url_weights` with ``storage_options`` and ``sha256``). ``weights`` a path:
    that path (which must exist). ``None``: the model's default published weights, fetched
    into (or found in) the cache; ``None`` if nothing is published for it.
    """
    if weights is not None and is_weights_url(weights):
        return fetch_url_weights(str(weights), model=model, cache_dir=cache_dir,
                                 storage_options=storage_options, sha256=sha256)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise MissingWeightsError(f"weights={str(weights)!r}: no such file or folder; pass "
                                      f"the path of a weights file for model {model!r}, or "
                                      "leave weights= out to fetch the published one")
        return path
    from .published import default_for

    if default_for(model) is None:
        return None
    return fetch_weights(model, cache_dir=cache_dir, base_url=base_url)


# -- weights at a URL -----------------------------------------------------------------------------

_URL_OPTIONS: dict[str, dict[str, Any]] = {}
_URL_OPTIONS_LOCK = threading.Lock()
_URL_FOLDER = "urls"
_SHA256_FRAGMENT = re.compile(r"^sha256=([0-9a-fA-F]{64})$")


def is_weights_url(weights: object) -> bool:
    """Whether ``weights`` names a remote file (``scheme://...``, not ``file://``)."""
    if not isinstance(weights, str):
        return False
    scheme = urlsplit(weights).scheme.lower()
    return "://" in weights and len(scheme) > 1 and scheme not in ("file", "local")


def register_url_options(prefix: str, options: Mapping[str, Any] | None) -> None:
    """Use ``options`` (fsspec storage options) for weights URLs starting with ``prefix``, in
    this process (``None`` or ``{}`` forgets them). The longest matching prefix wins."""
    with _URL_OPTIONS_LOCK:
        if options:
            _URL_OPTIONS[prefix] = dict(options)
        else:
            _URL_OPTIONS.pop(prefix, None)


def url_options(url: str) -> dict[str, Any]:
    """The storage options registered for ``url`` (:func:`register_url_options`), or ``{}``."""
    with _URL_OPTIONS_LOCK:
        matches = [p for p in _URL_OPTIONS if url.startswith(p)]
        return dict(_URL_OPTIONS[max(matches, key=len)]) if matches else {}


def _split_fragment(url: str) -> tuple[str, str | None]:
    """The URL without its fragment, and the sha256 a ``#sha256=<hex>`` fragment gives."""
    base, _, fragment = url.partition("#")
    if not fragment:
        return url, None
    match = _SHA256_FRAGMENT.match(fragment)
    if match is None:
        raise WeightsError(f"weights={url!r}: the only fragment understood is "
                           "#sha256=<64 hex digits>")
    return base, match.group(1).lower()


def url_cache_path(url: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch_url_weights` keeps the file at ``url`` (a fragment is ignored).

    ``<cache>/urls/<first 16 hex digits of the URL's sha256>/<file name>``: one folder per
    URL, so two URLs with the same file name never share a copy.
    """
    base, _ = _split_fragment(url)
    name = safe_name(PurePosixPath(urlsplit(base).path).name or "weights")
    key = hashlib.sha256(base.encode()).hexdigest()[:16]
    return _cache_root(cache_dir) / _URL_FOLDER / key / name


def expected_url_sha256(url: str, model: str | None = None) -> str | None:
    """The sha256 a weights URL must have, if one is known: its ``#sha256=<hex>`` fragment,
    else the published (or shipped) file of ``model`` with the URL's file name, else None."""
    base, from_fragment = _split_fragment(url)
    if from_fragment:
        return from_fragment
    name = PurePosixPath(urlsplit(base).path).name
    if model:
        from .registry import get, known_weights

        try:
            hashes = known_weights(get(model)).get(name, set())
        except XcloudError:  # not a registered model: the published artifacts only
            hashes = set()
        if hashes:
            return next(iter(hashes)) if len(hashes) == 1 else None
    from .published import PUBLISHED, published_for_model

    entries = published_for_model(model) if model else list(PUBLISHED.values())
    found = {f.sha256 for e in entries for f in e.files
             if f.sha256 and PurePosixPath(f.filename).name == name}
    return found.pop() if len(found) == 1 else None


def fetch_url_weights(url: str, *, model: str | None = None, sha256: str | None = None,
                      storage_options: Mapping[str, Any] | None = None,
                      cache_dir: str | os.PathLike | None = None,
                      retries: int | None = None) -> Path:
    """The local copy of the weights file at ``url``, downloaded into the cache if needed.

    Parameters
    ----------
    url
        ``https://``, ``http://``, ``s3://``, ``gs://``, ``az://``... (anything fsspec
        opens), optionally ending in ``#sha256=<hex>``.
    model
        The model the file is for: a file it publishes (or ships) under the same name gives
        the sha256 (:func:`expected_url_sha256`).
    sha256
        The file's expected sha256 (hex); overrides the fragment and the registry.
    storage_options
        fsspec options for the URL's filesystem (e.g. ``{"endpoint_url": ..., "anon":
        True}`` for s3fs, ``{"headers": {...}}`` for HTTP); default: those registered for it
        with :func:`register_url_options`.
    cache_dir
        The cache folder (default :func:`cache_dir`).
    retries
        Extra download attempts after a failure (default ``$XCLOUD_WEIGHTS_RETRIES`` or 2).

    Returns
    -------
    Path
        :func:`url_cache_path`: fetched once per cache, under a cross-process lock; a later
        call checks the cached file against the expected (or recorded) sha256.

    Raises
    ------
    MissingWeightsError
        The file could not be downloaded: the message names the URL, the error and where to
        put the file by hand.
    WeightsError
        The file does not have the expected sha256 (nothing is kept), or a malformed sha256.
    """
    base, _ = _split_fragment(url)
    expected = (sha256 or expected_url_sha256(url, model) or "").lower() or None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise WeightsError(f"sha256={sha256!r} for weights={url!r} must be 64 hex digits")
    options = dict(storage_options) if storage_options is not None else url_options(base)
    path = url_cache_path(base, cache_dir=cache_dir)
    with _file_lock(path):
        if path.is_file():
            actual = file_sha256(path)
            if actual == (expected or _read_record(path) or actual):
                if _read_record(path) is None:
                    _write_record(path, actual)
                return path
            path.unlink()  # a new expected hash, or a corrupt copy: fetch it again
            _record_path(path).unlink(missing_ok=True)
        try:
            _download_fsspec(base, path, expected, options, _retries(retries))
        except WeightsError:
            raise
        except Exception as error:  # network, credentials, missing object: say what to do
            reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
            raise MissingWeightsError(
                f"could not download weights={base!r} ({reason}); check the URL, the network "
                "and the storage options (credentials, endpoint_url), or download the file "
                f"and pass weights=PATH, or put it at {path}") from error
        _write_record(path, file_sha256(path))
    return path


def _download_fsspec(url: str, path: Path, sha256: str | None, options: Mapping[str, Any],
                     retries: int) -> None:
    """Copy ``url`` with fsspec into a temporary file beside ``path``, hashing as it goes; the
    file is moved into place only if its sha256 is the expected one."""
    fsspec = import_optional("fsspec", extra="cloud")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    for attempt in range(retries + 1):
        try:
            digest = hashlib.sha256()
            with fsspec.open(url, "rb", **options) as source, open(tmp, "wb") as target:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    target.write(block)
            break
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise
        except Exception:
            tmp.unlink(missing_ok=True)
            if attempt == retries:
                raise
            time.sleep(min(0.5 * 2**attempt, 10.0))
    if sha256 is not None and digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"downloaded {url} has sha256 {digest.hexdigest()}, expected "
                           f"{sha256}; nothing was kept in {path.parent}. Check the URL and the "
                           "expected hash, or try again")
    os.replace(tmp, path)


# -- internals ----------------------------------------------------------------------------------

def _cache_root(cache: str | os.PathLike | None) -> Path:
    return cache_dir(cache)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + _RECORD_SUFFIX)


def _read_record(path: Path) -> str | None:
    record = _record_path(path)
    if not record.is_file():
        return None
    text = record.read_text(encoding="ascii", errors="replace").split()
    return text[0] if text and re.fullmatch(r"[0-9a-f]{64}", text[0]) else None


def _write_record(path: Path, digest: str) -> None:
    record = _record_path(path)
    tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")
    os.replace(tmp, record)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    filelock = import_optional("filelock", extra=_EXTRA)
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path.with_name(path.name + _LOCK_SUFFIX))):
        yield


def _check(entry: PublishedWeights, file: PublishedFile, path: Path) -> FileCheck:
    """Read-only state of one file."""
    def make(status: str, expected: str | None = None, actual: str | None = None) -> FileCheck:
        return FileCheck(entry.name, file.filename, path, status, expected, actual)

    if not path.is_file():
        return make("missing", file.sha256)
    if file.size is not None and path.stat().st_size != file.size:
        return make("mismatch", f"{file.size} bytes", f"{path.stat().st_size} bytes")
    actual = file_sha256(path)
    if file.sha256 is not None:
        return make("verified" if actual == file.sha256 else "mismatch", file.sha256, actual)
    recorded = _read_record(path)
    if recorded is None:
        return make("unrecorded", None, actual)
    return make("recorded" if actual == recorded else "mismatch", recorded, actual)


def _check_cached(entry: PublishedWeights, file: PublishedFile, path: Path) -> None:
    """Verify a cached file (under its lock); remove it and raise if it contradicts its hash."""
    check = _check(entry, file, path)
    if check.status == "mismatch":
        path.unlink(missing_ok=True)
        _record_path(path).unlink(missing_ok=True)
        published_values = (file.sha256, f"{file.size} bytes")
        source = ("published" if check.expected in published_values
                  else "recorded at its first download")
        raise WeightsError(
            f"cached weights file {path} ({entry.name}) has {check.actual}, expected "
            f"{check.expected} ({source}); it was corrupt or replaced and has been removed: run "
            f"`xcloud weights fetch {entry.name}` to download it again, or pass weights=PATH")
    if check.status == "unrecorded":  # placed by hand: trust on first use
        _write_record(path, check.actual or file_sha256(path))


def _retries(retries: int | None) -> int:
    if retries is not None:
        return max(0, int(retries))
    try:
        return max(0, int(os.environ.get(RETRIES_ENV, "2")))
    except ValueError:
        return 2


@contextlib.contextmanager
def _quiet(logger: logging.Logger, quiet: bool) -> Iterator[None]:
    level = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fetch_one(entry: PublishedWeights, file: PublishedFile, root: Path, base_url: str | None,
               progress: bool, retries: int | None,
               missing: list[tuple[PublishedFile, str, str]]) -> None:
    path = local_path(entry, file, cache_dir=root)
    url = mirror_url(file.url, base_url)
    with _file_lock(path):
        if path.is_file():
            _check_cached(entry, file, path)
            return
        try:
            _download(url, path, file.sha256, progress, _retries(retries))
        except WeightsError:
            raise
        except Exception as error:  # requests' errors and OSError: report, try the others
            reason = f"{type(error).__name__}: {error}"
            missing.append((file, url, reason if len(reason) < 200 else reason[:197] + "..."))
            return
        if file.size is not None and path.stat().st_size != file.size:
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            raise WeightsError(f"downloaded {url} has {size} bytes, the published file has "
                               f"{file.size}; it was removed. Check base_url= / "
                               f"${BASE_URL_ENV} or download it again")
        _write_record(path, file_sha256(path))


def _download(url: str, path: Path, sha256: str | None, progress: bool, retries: int) -> None:
    """Download ``url`` to ``path`` with pooch: temp file, hash check, then an atomic move."""
    pooch = import_optional("pooch", extra=_EXTRA)
    import requests

    if progress:
        progress = importlib.util.find_spec("tqdm") is not None
    fetcher = pooch.create(path=path.parent, base_url="", retry_if_failed=retries,
                           registry={path.name: f"sha256:{sha256}" if sha256 else None},
                           urls={path.name: url})
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=_TIMEOUT_S)
    try:
        with _quiet(pooch.get_logger(), not progress):
            fetcher.fetch(path.name, downloader=downloader, progressbar=progress)
    except ValueError as error:  # pooch: the hash does not match; nothing was moved into place
        if isinstance(error, requests.exceptions.RequestException):
            raise
        raise WeightsError(
            f"downloaded {url} does not have the published sha256 {sha256}: {error}. Nothing "
            f"was kept in {path.parent}. Check base_url= / ${BASE_URL_ENV} (a mirror must serve "
            "the authors' files unchanged) or try again") from None


def _named_extras(entry: PublishedWeights, root: Path,
                  files: list[PublishedFile]) -> list[PublishedFile]:
    """Files a cached SEnSeI-v2 config.yaml names that the registry does not list."""
    if entry.format != "senseiv2-full-model":
        return []
    config = next((f for f in files if f.filename.endswith("/config.yaml")), None)
    if config is None:
        return []
    path = local_path(entry, config, cache_dir=root)
    if not path.is_file():
        return []
    match = _SENSEI_LINE.search(path.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        return []
    basename = match.group(1).replace("\\", "/").rsplit("/", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9._-]+\.ya?ml", basename) or basename.startswith("."):
        return []
    filename = f"sensei-configs/{basename}"
    if any(f.filename == filename for f in files):
        return []
    base = config.url.rsplit("/full-models/", 1)[0]
    return [PublishedFile(f"{base}/{filename}", filename)]


def _missing_message(entry: PublishedWeights, root: Path,
                     missing: list[tuple[PublishedFile, str, str]]) -> str:
    lines = [f"could not download the weights {entry.name!r} (model {entry.model!r}):"]
    for file, url, reason in missing:
        lines.append(f"  {url}\n    -> {local_path(entry, file, cache_dir=root)}  ({reason})")
    lines.append(
        "Download these files on a machine with a network and put each at the path after '->' "
        f"(the weights cache; move it with ${CACHE_ENV} or cache_dir=), or point "
        f"${BASE_URL_ENV} / base_url= at a mirror, or pass weights=PATH to the model.")
    return "\n".join(lines)
