"""Digests of the code that produces an artifact, computed from what the code imports.

A stage's code is the transitive import closure, inside this package, of its run function: the
imports in the function's body, in the same module's helpers it names and those at its module's
top that bind a name they use, then every package module those import (at module level or
inside a function). An import counts what it uses: `from minitron_deploy.compress.scores import
load_scores` the module `scores`, `from minitron_deploy.distill import run_distillation` the
package's `__init__` (whose imports, lazy ones included, follow). `if TYPE_CHECKING:` imports
run nothing and are left out. Three kinds of use that are not an `import` statement count too:

- a string spelling a module of the package (`"minitron_deploy.engines.hf:HFEngine"`, as the
  engine and export registries load their records with `importlib`);
- a string naming a file beside the module (`"torch_model.py"`, copied into a Triton repository);
- a string naming a plain folder beside the module (`"profiles"`, package data): all its files.

So a code change invalidates exactly the stages whose closure holds the edited file (and
everything downstream of them, through their keys), and a CI cache restored across commits is
not reused blindly. Parsing and file digests are cached per process, keyed by each file's
modification time and size.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import re
from collections.abc import Callable, Iterable
from pathlib import Path

PACKAGE = "minitron_deploy"
ROOT = Path(__file__).resolve().parents[1]  # the package's folder
_DOTTED = re.compile(rf"^{PACKAGE}(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")


@functools.cache
def package_modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> source file."""
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _owner(name: str) -> str | None:
    """The package module `name` (a module, or an attribute below one) belongs to."""
    mods = package_modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Uses(ast.NodeVisitor):
    """Package modules and data files one piece of source uses."""

    def __init__(self, module: str, folder: Path):
        self.module, self.folder = module, folder
        self.modules: set[str] = set()
        self.files: set[Path] = set()

    def _add(self, name: str) -> None:
        owner = _owner(name) if name.split(".")[0] == PACKAGE else None
        if owner:
            self.modules.add(owner)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._add(a.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the module's package
            is_pkg = package_modules().get(self.module, Path()).name == "__init__.py"
            pkg = self.module.split(".")
            pkg = pkg if is_pkg else pkg[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join([*pkg, *([base] if base else [])])
        mods = package_modules()
        for a in node.names:  # `from pkg import submodule` uses the submodule, else pkg
            self._add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)

    def visit_Constant(self, node: ast.Constant) -> None:
        s = node.value
        if not isinstance(s, str) or not s or len(s) > 200:
            return
        if _DOTTED.match(s):
            self._add(s.split(":")[0])
        elif "/" not in s and "\\" not in s and s not in (".", "..") and s.strip() == s:
            p = self.folder / s
            try:
                if p.is_file() and "." in s:
                    self.files.add(p)
                elif p.is_dir() and not (p / "__init__.py").exists():
                    self.files |= {
                        f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                    }
            except OSError:
                return


@functools.cache
def _parse(path: str, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(Path(path).read_bytes(), filename=path)


def _uses(module: str, nodes: Iterable[ast.AST]) -> _Uses:
    path = package_modules()[module]
    v = _Uses(module, path.parent)
    for n in nodes:
        v.visit(n)
    return v


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def _module_uses(module: str) -> tuple[frozenset[str], frozenset[Path]]:
    return _module_uses_at(module, *_stamp(package_modules()[module]))


@functools.cache
def _module_uses_at(
    module: str, path: str, mtime_ns: int, size: int
) -> tuple[frozenset[str], frozenset[Path]]:
    v = _uses(module, [_parse(path, mtime_ns, size)])
    return frozenset(v.modules), frozenset(v.files)


def module_closure(modules: Iterable[str]) -> tuple[list[str], list[Path]]:
    """(package modules, data files) that importing `modules` runs or reads, transitively."""
    todo = set()
    for m in modules:
        owner = _owner(m)
        if owner is None:
            raise ModuleNotFoundError(f"no module {m!r} in {PACKAGE} to hash")
        todo.add(owner)
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        mods, data = _module_uses(m)
        files |= data
        todo |= mods - seen
    return sorted(seen), sorted(files)


def _function_uses(fn: Callable) -> tuple[frozenset[str], tuple[str, ...]]:
    """(package modules `fn` imports, sources of `fn` and the same-module helpers it names).

    The module's own top-level imports count when `fn` (or a helper it names) names what they
    bind, as do its other functions and constants; imports under a top-level `if` always.
    """
    fn = inspect.unwrap(fn)
    module = fn.__module__
    if module not in package_modules():
        # A stage function from outside the package (a plugin, a test's stand-in): its own
        # source is what its key follows; what it imports from the package is not traced.
        try:
            return frozenset(), (inspect.getsource(fn),)
        except (OSError, TypeError) as e:
            raise ModuleNotFoundError(f"{fn!r} has no source to hash: {e}") from e
    return _function_uses_at(module, fn.__name__, *_stamp(package_modules()[module]))


@functools.cache
def _function_uses_at(
    module: str, name: str, path: str, mtime_ns: int, size: int
) -> tuple[frozenset[str], tuple[str, ...]]:
    tree = _parse(path, mtime_ns, size)
    defs: dict[str, ast.stmt] = {}
    for n in tree.body:
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defs[n.name] = n
        elif isinstance(n, ast.Assign | ast.AnnAssign):
            for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                if isinstance(t, ast.Name):
                    defs[t.id] = n
    guarded = [n for n in tree.body if isinstance(n, ast.If)]
    mods = set(_uses(module, guarded).modules)
    sources: list[str] = []
    named: set[str] = set()
    todo, seen = [name], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        node = defs[name]
        sources.append(ast.unparse(node))
        mods |= _uses(module, [node]).modules
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        named |= names
        todo += [n for n in names if n in defs]
    # A top-level import counts when the function (or a helper it names) names what it binds:
    # a stage module's other hooks (its estimate, say) import what its run function never runs.
    for n in tree.body:
        if isinstance(n, ast.Import | ast.ImportFrom) and named & _bound(n):
            mods |= _uses(module, [n]).modules
    return frozenset(mods), tuple(sources)


def _bound(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The names an import statement binds (`import a.b` binds `a`)."""
    if isinstance(node, ast.Import):
        return {a.asname or a.name.split(".")[0] for a in node.names}
    return {a.asname or a.name for a in node.names}


def code_closure(functions: Iterable[Callable]) -> tuple[list[str], list[Path]]:
    """(package modules, data files) that `functions` run or read, transitively."""
    mods: set[str] = set()
    for fn in functions:
        mods |= _function_uses(fn)[0]
    return module_closure(mods)


@functools.cache
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files_digest(files: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """SHA-256 over files (by path inside the package and content) and extra text."""
    h = hashlib.sha256()
    for f in sorted(set(files)):
        st = f.stat()
        rel = f.relative_to(ROOT).as_posix()  # independent of the checkout
        h.update(rel.encode() + b"\0" + _file_digest(str(f), st.st_mtime_ns, st.st_size).encode())
    for text in extra:
        h.update(b"\0" + text.encode())
    return h.hexdigest()


def module_digest(name: str) -> str:
    """Digest of module `name` and everything it imports inside the package."""
    mods, data = module_closure([name])
    return files_digest([package_modules()[m] for m in mods] + data)


def code_digest(functions: Iterable[Callable], modules: Iterable[str] = ()) -> str:
    """Digest of `functions` (their source, that of the helpers they call, and the closure of
    what they import) and of `modules` with their closures."""
    functions = [f for f in functions if f is not None]
    mods: set[str] = set(modules)
    sources: list[str] = []
    for fn in functions:
        m, src = _function_uses(fn)
        mods |= m
        sources += src
    closure, data = module_closure(mods) if mods else ([], [])
    files = [package_modules()[m] for m in closure] + data
    return files_digest(files, sources)
