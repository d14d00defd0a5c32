"""The layer order of the package (README, "Development"): an import, at module top or inside
a function, points to its own layer or to one below it, never upward."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "minitron_deploy"

# Top to bottom; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    ("__main__", "cli", "testing"),
    ("commands",),
    ("pipeline",),  # graph, runner, worker, execute, summary, codehash
    ("profile",),
    ("pipeline.stages", "pipeline.context", "pipeline.store", "pipeline.estimate"),
    ("search",),
    ("launch",),
    ("compress", "distill"),
    ("evaluation", "bench", "triton"),
    ("engines", "export"),
    ("quant",),
    ("data",),
    ("model",),
    ("", "hardware", "fsutil", "console", "errors", "stats", "cliopts"),  # "": the __init__
]


def layer_of(module: str) -> int:
    """The layer index of a dotted module name inside the package (0 = top)."""
    rel = module.removeprefix("minitron_deploy").removeprefix(".")
    best, index = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (rel == p or rel.startswith(p + ".") or p == "" == rel) and len(p) > best:
                best, index = len(p), i
    assert index is not None, f"{module} is in no layer: add it to LAYERS (and the README)"
    return index


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for f in package.rglob("*.py"):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def upward_imports(package: Path = PACKAGE) -> list[str]:
    mods = modules(package)

    def target(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for m, f in sorted(mods.items()):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                t = target(n)
                if t and t.startswith("minitron_deploy") and layer_of(t) < layer_of(m):
                    rel = f.relative_to(package.parent)
                    found.append(f"{rel}:{node.lineno} {m} -> {t}")
    return found


def test_no_import_points_upward():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The check is not vacuous: in a small package laid out like ours, a lazy import from
    model/ into the pipeline's runner is found, and the same import downward is not."""
    pkg = tmp_path / "minitron_deploy"
    for d in ("", "model", "pipeline"):
        (pkg / d).mkdir(parents=True, exist_ok=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "pipeline" / "runner.py").write_text("from minitron_deploy.model import io\n")
    (pkg / "model" / "io.py").write_text("def f():\n    import minitron_deploy.pipeline.runner\n")
    assert upward_imports(pkg) == [
        "minitron_deploy/model/io.py:2 minitron_deploy.model.io -> minitron_deploy.pipeline.runner"
    ]
    assert layer_of("minitron_deploy.profile.load") < layer_of("minitron_deploy.pipeline.stages")
    assert layer_of("minitron_deploy.pipeline.runner") < layer_of("minitron_deploy.launch.config")
    assert layer_of("minitron_deploy") == len(LAYERS) - 1
