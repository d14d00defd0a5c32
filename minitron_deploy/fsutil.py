"""Atomic file and folder writes, and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minitron_deploy.errors import InputError


def cache_root() -> Path:
    """The cache of built-in models, prepared data, probes and converted engines:
    `$MINITRON_CACHE` or ~/.cache/minitron-deploy."""
    return Path(os.environ.get("MINITRON_CACHE", Path.home() / ".cache" / "minitron-deploy"))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_umask(root: str | Path) -> None:
    """Give `root` and everything below it the modes plain `open()`/`mkdir()` would.

    Temporary files and folders (`mkstemp`, `mkdtemp`, and libraries that write through them)
    are private (0600/0700); outputs renamed into place from them would stay unreadable to
    other users, e.g. a Triton container running as a non-root user. Executable bits of files
    are kept; symbolic links and hard-linked files (their source owns their mode) are left
    alone, as is anything this process may not change.
    """
    mask = _umask()
    fmode, dmode, xmode = 0o666 & ~mask, 0o777 & ~mask, 0o111 & ~mask
    root = Path(root)
    paths = [root] if root.is_symlink() or not root.is_dir() else [root, *root.rglob("*")]
    for p in paths:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
            continue
        mode = dmode if stat.S_ISDIR(st.st_mode) else fmode | (xmode if st.st_mode & 0o100 else 0)
        with contextlib.suppress(PermissionError):
            os.chmod(p, mode)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def check_output_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse an output folder `atomic_dir` would refuse, before any expensive work.

    Raises:
        InputError: `out` is a file, or a non-empty folder and `overwrite` is not set.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"output path {out} exists and is not a folder", fix="choose another --out"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(
            f"output folder {out} already exists and is not empty",
            fix="remove it, choose another --out, or pass --overwrite",
        )
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it is renamed to `out`.

    On any exception the temporary folder is removed and `out` is left as it was, so a
    failed command never leaves a half-written output behind.

    Args:
        out: the final folder.
        overwrite: replace an existing non-empty `out` (else it is an error).
    """
    out = check_output_dir(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        share_like_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old.{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """Hex SHA-256 over every file below `root` (relative names and contents, sorted).

    Args:
        root: a folder or a single file.
        exclude: file names to leave out (e.g. provenance records that hold timestamps).
    """
    root = Path(root)
    if root.is_file():
        return sha256_file(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in exclude:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of a canonical JSON rendering of `obj`."""
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


class HashCache:
    """Content hashes of folders and files, remembered by (path, size, mtime) of every file,
    so a second look at an unchanged corpus or model folder costs a `stat` per file."""

    def __init__(self, path: Path):
        self.path = path
        self._saved = time.monotonic()
        self._dirty = False
        try:
            self.data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}

    def save(self) -> None:
        """Write what was learnt (file hashes are written at most every few seconds)."""
        if self._dirty:
            atomic_write_json(self.path, self.data)
            self._dirty, self._saved = False, time.monotonic()

    def tree(self, root: Path, exclude: tuple[str, ...] = ()) -> str:
        files = [p for p in root.rglob("*") if p.is_file() and p.name not in exclude]
        stamp = sha256_json(
            sorted(
                (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                for p in files
            )
        )
        hit = self.data.get(str(root.resolve()))
        if hit and hit["stamp"] == stamp:
            return hit["sha256"]
        digest = sha256_tree(root, exclude=exclude)
        self.data[str(root.resolve())] = {"stamp": stamp, "sha256": digest}
        atomic_write_json(self.path, self.data)
        return digest

    def file(self, path: Path) -> str:
        """SHA-256 of one file, recomputed only when its size or mtime changed."""
        st = Path(path).stat()
        stamp = [st.st_size, st.st_mtime_ns]
        key = "file:" + str(Path(path).resolve())
        hit = self.data.get(key)
        if hit and hit["stamp"] == stamp:
            return hit["sha256"]
        digest = sha256_file(path)
        self.data[key] = {"stamp": stamp, "sha256": digest}
        self._dirty = True
        if time.monotonic() - self._saved > 5:  # a corpus of many files: not a write per file
            self.save()
        return digest
