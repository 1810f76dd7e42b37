"""Where data sets are looked for, how they are downloaded, and the errors readers raise.

Look-up order for every data set (first hit wins):

1. ``data_dir`` passed by the caller, else the ``DROPKIT_DATA`` environment variable;
   each is searched directly and in the data set's usual sub-folders, so both
   ``--data-dir ../shared/data`` and ``--data-dir ../shared/data/mnist`` work;
2. the dropkit cache (``platformdirs.user_cache_dir("dropkit")/data/<name>``), the
   only place downloads are written to.

Nothing here runs at import time: no directory is created until a download needs it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, TypeVar, Union

from dropkit.lab.errors import LabError

__all__ = [
    "DATA_ENV_VAR",
    "DataFormatError",
    "DatasetNotFoundError",
    "ChecksumError",
    "DownloadError",
    "RemoteFile",
    "default_cache_dir",
    "search_dirs",
    "cache_root",
    "find_file",
    "verify_checksum",
    "download_file",
    "file_digest",
    "once_per_version",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable naming a folder of local data set copies.
DATA_ENV_VAR = "DROPKIT_DATA"

_CHUNK = 1 << 20
_HASHES = ("md5", "sha1", "sha256")

#: The opener used for downloads; tests replace it to serve generated files.
Opener = Callable[..., BinaryIO]


class DatasetNotFoundError(LabError, FileNotFoundError):
    """Required files are absent from every searched folder (and could not be downloaded)."""


class DataFormatError(LabError, ValueError):
    """A file exists but its contents are not what the reader expects."""


class ChecksumError(LabError, ValueError):
    """A file's digest differs from the published one."""


class DownloadError(LabError, OSError):
    """Every mirror failed for a reason other than a checksum mismatch."""


@dataclass(frozen=True)
class RemoteFile:
    """A file published at one or more mirrors, with its published digest.

    ``checksum`` is ``"<algorithm>:<hex digest>"`` with algorithm md5, sha1 or sha256.
    """

    name: str
    mirrors: tuple[str, ...]
    checksum: str

    def __post_init__(self) -> None:
        algorithm, _, digest = self.checksum.partition(":")
        if algorithm not in _HASHES or not digest:
            raise ValueError(
                f"checksum of {self.name} has to be '<algorithm>:<hex>' with algorithm in "
                f"{_HASHES}, but got {self.checksum!r}"
            )

    @property
    def urls(self) -> list[str]:
        return [mirror.rstrip("/") + "/" + self.name for mirror in self.mirrors]


def default_cache_dir() -> Path:
    """The per-user cache folder downloads go to (``<user cache>/dropkit/data``)."""
    try:
        import platformdirs
    except ImportError:  # platformdirs is an optional extra; follow XDG by hand without it
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "dropkit" / "data"
    return Path(platformdirs.user_cache_dir("dropkit")) / "data"


def _as_dir(value: PathLike, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} has to be a path (str or os.PathLike), but got {value!r}")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} {str(value)!r} is not an existing directory")
    return path


def search_dirs(
    name: str,
    data_dir: Optional[PathLike],
    subfolders: Sequence[str],
    cache_dir: Optional[PathLike] = None,
) -> list[Path]:
    """Folders to look in for data set ``name``, in order (see the module docstring).

    ``data_dir`` (or ``$DROPKIT_DATA``) must exist when given: a typo there should
    fail loudly instead of silently falling through to the cache.
    """
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(_as_dir(data_dir, "data_dir"))
    elif os.environ.get(DATA_ENV_VAR):
        roots.append(_as_dir(os.environ[DATA_ENV_VAR], f"${DATA_ENV_VAR}"))
    dirs: list[Path] = []
    for root in roots:
        dirs.append(root)
        dirs.extend(root / sub for sub in subfolders)
    dirs.append(cache_root(name, cache_dir))
    # Keep order, drop duplicates (data_dir may itself be the cache folder).
    return list(dict.fromkeys(dirs))


def cache_root(name: str, cache_dir: Optional[PathLike] = None) -> Path:
    """The folder downloads of data set ``name`` are written to."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / name


def find_file(dirs: Iterable[Path], names: Sequence[str]) -> Optional[Path]:
    """First existing ``dir/name`` over ``dirs`` (outer) and ``names`` (inner), or None."""
    for directory in dirs:
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


_T = TypeVar("_T")
_ONCE: dict[tuple, object] = {}


def once_per_version(kind: str, paths: Sequence[Path], check: Callable[[], _T]) -> _T:
    """``check()``, computed once per version of ``paths`` (resolved name, size, mtime).

    The status commands read whole files to tell a damaged copy from a sound one;
    ``dropkit lab tasks`` asks for several tasks that share a data set, and a
    file replaced in between is checked again.
    """
    key = (kind, *((str(p.resolve()), stat.st_size, stat.st_mtime_ns)
                   for p in paths for stat in (p.stat(),)))
    if key not in _ONCE:
        _ONCE[key] = check()
    return _ONCE[key]  # type: ignore[return-value]


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, checksum: str, hint: str = "") -> None:
    """Raise :class:`ChecksumError` when ``path``'s digest is not ``checksum``."""
    algorithm, _, expected = checksum.partition(":")
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise ChecksumError(
            f"{path} has {algorithm} {actual}, but the published file has {expected}{hint}"
        )


def _default_opener(url: str, timeout: float) -> BinaryIO:
    request = urllib.request.Request(url, headers={"User-Agent": "dropkit"})
    return urllib.request.urlopen(request, timeout=timeout)


def download_file(
    remote: RemoteFile,
    target_dir: Path,
    *,
    opener: Optional[Opener] = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``remote`` into ``target_dir``, trying each mirror until one verifies.

    The bytes stream into a temporary file in ``target_dir`` that is renamed onto
    ``target_dir/remote.name`` only after its digest matched, so an interrupted or
    corrupt download never leaves a file a later run would trust. Raises
    :class:`ChecksumError` when some mirror served wrong bytes and none served the
    right ones, :class:`DownloadError` when every mirror was unreachable.
    """
    open_url = opener or _default_opener
    algorithm, _, expected = remote.checksum.partition(":")
    expected = expected.lower()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / remote.name
    failures: list[str] = []
    mismatched = False
    for url in remote.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.name}.", suffix=".part", dir=target_dir)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.new(algorithm)
            with os.fdopen(fd, "wb") as out, open_url(url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if actual != expected:
                mismatched = True
                failures.append(f"{url}: {algorithm} {actual} != published {expected}")
                continue
            os.replace(tmp, target)
            return target
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # OSError covers URLError, HTTPError and timeouts; HTTPException covers a
            # connection that closes before Content-Length bytes arrived (IncompleteRead).
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    detail = "\n  ".join(failures)
    if mismatched:
        raise ChecksumError(
            f"download of {remote.name} failed checksum verification (nothing was kept):\n"
            f"  {detail}"
        )
    raise DownloadError(f"could not download {remote.name}:\n  {detail}")
