"""`minitron-deploy bench`: the ISL/OSL x batch throughput matrix over several models."""

from __future__ import annotations

import argparse
from pathlib import Path

from minitron_deploy import bench as bench_lib  # run_matrix looked up at call time (tests)
from minitron_deploy.bench.config import BenchConfig
from minitron_deploy.bench.report import markdown
from minitron_deploy.cliopts import add_options, build
from minitron_deploy.console import info, print_json
from minitron_deploy.engines.cli import add_engine_options, engine_options
from minitron_deploy.engines.registry import ENGINES
from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import check_output_dir
from minitron_deploy.model.teacher import BUILTIN_MODELS, builtin_model

NAME = "bench"
HELP = "Throughput matrix (ISL/OSL pairs x batch) of one or more models; the first is the base."


RENAME = {"isl_osl": "matrix"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="checkpoint folder (or built-in name smollm2-135m); repeat; the first is the base",
    )
    add_options(
        p.add_argument_group("matrix settings (BenchConfig)"),
        BenchConfig,
        exclude=("engine_opts",),
        rename=RENAME,
        parsers={"isl_osl": str},
        choices={"engine": list(ENGINES)},
        metavars={"isl_osl": "ISL/OSL[,..]|gpu|cpu", "batch": "B[,B..]"},
    )
    add_engine_options(p)  # generated from each engine's options model
    p.add_argument("--out", help="write results.json, report.md and PNG charts here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help='print {"results": [...]} last on stdout')


def parse_models(specs: list[str]) -> list[tuple[str, object]]:
    """[NAME=]DIR specs -> (name, path); built-in names resolve to their cached checkpoint."""
    out = []
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        p = Path(path)
        if not p.exists() and path in BUILTIN_MODELS:
            p = builtin_model(path)
        if not p.is_dir():
            raise InputError(f"model folder {path} does not exist", where="--model")
        out.append((name or Path(path).name, p))
    return out


def run(args: argparse.Namespace) -> int:
    engine = getattr(args, "engine", BenchConfig.model_fields["engine"].default)
    opts = engine_options(args, engine)
    cfg = build(BenchConfig, args, what="invalid bench settings", rename=RENAME, engine_opts=opts)
    if args.out:
        check_output_dir(args.out, overwrite=args.overwrite)  # before the matrix runs
    models = parse_models(args.model)
    cfg.batches(len(models))  # one batch for all, or one per model
    results = bench_lib.run_matrix(models, cfg)
    if args.out:
        files = bench_lib.write_reports(results, args.out, overwrite=args.overwrite)
        info(f"wrote {', '.join(f.name for f in files)} to {args.out}")
    if args.json:
        info(markdown(results))
        print_json({"results": results["results"]})
    else:
        print(markdown(results))
    return 0
