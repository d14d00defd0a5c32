"""`minitron-deploy bench`: the ISL/OSL x batch throughput matrix over several models."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "Throughput matrix (ISL/OSL pairs x batch) of one or more models; the first is the base."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="checkpoint folder (or built-in name smollm2-135m); repeat; the first is the base",
    )
    p.add_argument(
        "--engine",
        default="torch",
        choices=["torch", "hf", "hf-static", "ort", "trtllm"],
        help="engine back end (default: the built-in torch engine)",
    )
    p.add_argument(
        "--matrix",
        default="default",
        help="ISL/OSL pairs, e.g. '128/128,128/2048' or 16/8; 'gpu', 'cpu' or 'default' "
        "(GPU grid on CUDA, scaled-down grid on CPU)",
    )
    p.add_argument(
        "--batch",
        type=int,
        nargs="+",
        help="batch per model (one for all, or one per --model); default 32 base / 64 others",
    )
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per variant and pair")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant (≥ 3)")
    p.add_argument("--compile", action="store_true", help="torch engine: torch.compile (CUDA)")
    p.add_argument("--cuda-graphs", action="store_true", help="torch engine: CUDA graphs")
    p.add_argument(
        "--no-prepack",
        action="store_true",
        help="torch engine: keep plain weights on CPU (no oneDNN prepacking)",
    )
    p.add_argument("--out", help="write results.json, report.md and PNG charts here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help='print {"results": [...]} last on stdout')


def parse_models(specs: list[str]) -> list[tuple[str, object]]:
    """[NAME=]DIR specs -> (name, path); built-in names resolve to their cached checkpoint."""
    from pathlib import Path

    from minitron_deploy.errors import InputError
    from minitron_deploy.model.teacher import BUILTIN_MODELS, builtin_model

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
    from pydantic import ValidationError

    from minitron_deploy.bench import BenchConfig, run_matrix, write_reports
    from minitron_deploy.console import info, print_json
    from minitron_deploy.errors import InputError

    opts = {}
    if args.engine == "torch":
        opts = {"compile": args.compile, "cuda_graphs": args.cuda_graphs}
        if args.no_prepack:
            opts["prepack"] = False
    try:
        cfg = BenchConfig(
            engine=args.engine,
            dtype=args.dtype,
            device=args.device,
            isl_osl=None if args.matrix == "default" else args.matrix,
            batch=args.batch,
            warmup=args.warmup,
            repeats=args.repeats,
            engine_opts=opts,
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(
            f"invalid bench setting {'.'.join(map(str, err['loc']))}: {err['msg']}",
            where="bench options",
        ) from None
    models = parse_models(args.model)
    results = run_matrix(models, cfg)
    if args.out:
        files = write_reports(results, args.out, overwrite=args.overwrite)
        info(f"wrote {', '.join(f.name for f in files)} to {args.out}")
    from minitron_deploy.bench.report import markdown

    if args.json:
        info(markdown(results))
        print_json({"results": results["results"]})
    else:
        print(markdown(results))
    return 0
