"""`minitron-deploy bench`: the ISL/OSL x batch throughput matrix over several models."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "Throughput matrix (ISL/OSL pairs x batch) of one or more models; the first is the base."


RENAME = {"isl_osl": "matrix"}


def vllm_rename() -> dict[str, str]:
    """vLLM's options as --vllm-threads, --vllm-kv-cache-gb, --vllm-compiled, ..."""
    from minitron_deploy.engines.vllm_engine import VllmOptions

    return {f: f"vllm_{f}" for f in VllmOptions.model_fields}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from minitron_deploy.bench.config import BenchConfig
    from minitron_deploy.cliopts import add_options
    from minitron_deploy.engines.registry import ENGINES

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
    t = p.add_argument_group("torch engine")
    t.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA)")
    t.add_argument("--cuda-graphs", action="store_true", help="CUDA graphs for decode steps")
    t.add_argument(
        "--no-prepack",
        action="store_true",
        help="keep plain weights on CPU (no oneDNN prepacking)",
    )
    from minitron_deploy.engines.vllm_engine import VllmOptions

    add_options(
        p.add_argument_group("vllm engine (VllmOptions; vLLM runs from .venv-vllm)"),
        VllmOptions,
        rename=vllm_rename(),
    )
    p.add_argument(
        "--hf-dir",
        help="trtllm engine, TensorRT-LLM checkpoint as --model: the HF folder it was exported "
        "from (config, tokenizer); default: the source in its provenance.json",
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
    from minitron_deploy.bench import BenchConfig, run_matrix, write_reports
    from minitron_deploy.cliopts import build, flag, given
    from minitron_deploy.console import info, print_json
    from minitron_deploy.engines.vllm_engine import VllmOptions
    from minitron_deploy.errors import InputError
    from minitron_deploy.fsutil import check_output_dir

    opts = {}
    engine = getattr(args, "engine", "torch")
    vllm_opts = given(args, VllmOptions)
    if args.hf_dir and engine != "trtllm":
        raise InputError("--hf-dir applies to --engine trtllm only", where="--hf-dir")
    if vllm_opts and engine != "vllm":
        names = ", ".join(flag(k, vllm_rename()) for k in vllm_opts)
        raise InputError(f"{names} apply to --engine vllm only", where=names)
    if engine == "vllm":
        opts = build(VllmOptions, args, what="invalid vllm options", rename=vllm_rename())
        opts = opts.model_dump(exclude_unset=True)
    elif engine == "torch":
        opts = {"compile": args.compile, "cuda_graphs": args.cuda_graphs}
        if args.no_prepack:
            opts["prepack"] = False
    elif args.hf_dir:
        opts = {"hf_dir": args.hf_dir}
    cfg = build(BenchConfig, args, what="invalid bench settings", rename=RENAME, engine_opts=opts)
    if args.out:
        check_output_dir(args.out, overwrite=args.overwrite)  # before the matrix runs
    models = parse_models(args.model)
    cfg.batches(len(models))  # one batch for all, or one per model
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
