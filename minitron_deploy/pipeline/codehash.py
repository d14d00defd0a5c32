"""Digests of the code that produces an artifact, so a code change invalidates exactly the
stages whose modules it touches (and a CI cache restored across commits is not reused blindly).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path


def module_files(name: str) -> list[Path]:
    """The source files of a module, or of every module below a package."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module {name!r} to hash")
    origin = Path(spec.origin)
    if origin.name == "__init__.py":
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


@functools.cache
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_digest(modules: Iterable[str], functions: Iterable[Callable] = ()) -> str:
    """SHA-256 over the bytes of `modules`' source files and the source of `functions`."""
    h = hashlib.sha256()
    files = sorted({f for m in modules for f in module_files(m)})
    for f in files:
        st = f.stat()
        rel = f.as_posix().rsplit("/minitron_deploy/", 1)[-1]  # independent of the checkout
        h.update(rel.encode() + b"\0" + _file_digest(str(f), st.st_mtime_ns, st.st_size).encode())
    for fn in functions:
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()
