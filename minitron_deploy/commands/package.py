"""`minitron-deploy package triton --model DIR --out REPO`: write a Triton model repository."""

from __future__ import annotations

import argparse

NAME = "package"
HELP = "Package a checkpoint for serving (triton: a Triton model repository)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    t = sub.add_parser("triton", help="a Triton model repository (torch or TensorRT-LLM)")
    t.add_argument("--model", required=True, help="HF Llama checkpoint folder (with tokenizer)")
    t.add_argument("--out", required=True, help="repository folder to create")
    t.add_argument("--backend", choices=["torch", "trtllm"], default="torch", help="model type")
    t.add_argument("--max-batch-size", type=int, default=8, help="largest batch (> 0)")
    t.add_argument("--decoupled", action="store_true", help="decoupled model (streaming)")
    t.add_argument("--model-name", default=None, help="Triton model name")
    t.add_argument("--max-tokens", type=int, default=64, help="default output tokens per request")
    t.add_argument("--tp", type=int, default=1, help="tensor parallel size (trtllm)")
    t.add_argument("--kv-cache-free-gpu-mem-fraction", type=float, default=0.9, help="(trtllm)")
    t.add_argument("--engine-dir", default=None, help="legacy trtllm-build engine (trtllm)")
    t.add_argument(
        "--legacy-templates",
        default=None,
        help="TensorRT-LLM's all_models/inflight_batcher_llm (with --engine-dir)",
    )
    t.add_argument("--llmapi-src", default=None, help="folder with llmapi model.py, helpers.py")
    t.add_argument("--served-model-path", default=None, help="checkpoint path seen by the server")
    t.add_argument("--no-copy-model", action="store_true", help="torch: reference, not copy")
    t.add_argument("--dtype", default="auto", help="torch: compute dtype")
    t.add_argument("--device", default="cpu", help="torch: device")
    t.add_argument("--num-threads", type=int, default=0, help="torch: threads per instance")
    t.add_argument("--instances", type=int, default=1, help="model instances")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument("--json", action="store_true", help="print the summary as one JSON line")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from minitron_deploy.console import info, print_json
    from minitron_deploy.errors import InputError
    from minitron_deploy.triton import PackageConfig, package_triton

    try:
        cfg = PackageConfig(
            backend=args.backend,
            max_batch_size=args.max_batch_size,
            decoupled=args.decoupled,
            model_name=args.model_name,
            max_tokens=args.max_tokens,
            tensor_parallel_size=args.tp,
            kv_cache_free_gpu_mem_fraction=args.kv_cache_free_gpu_mem_fraction,
            engine_dir=args.engine_dir,
            legacy_templates=args.legacy_templates,
            llmapi_src=args.llmapi_src,
            served_model_path=args.served_model_path,
            copy_model=not args.no_copy_model,
            dtype=args.dtype,
            device=args.device,
            num_threads=args.num_threads,
            instance_count=args.instances,
        )
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "options"
        raise InputError(
            f"{field}={err.get('input')!r}: {err['msg']}",
            where="--" + field.replace("_", "-"),
        ) from None
    summary = package_triton(args.model, args.out, cfg, overwrite=args.overwrite)
    info(f"wrote Triton repository {summary['repo']} ({summary['layout']}: {summary['models']})")
    if args.json:
        print_json(summary)
    return 0
