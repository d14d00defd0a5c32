"""`minitron-deploy export --model DIR --format FMT --out DIR`: write a deployable checkpoint."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "Export a Llama checkpoint as HF bf16, HF FP8, a TensorRT-LLM checkpoint or ONNX."
FORMATS = ("hf", "hf-fp8", "trtllm-ckpt", "onnx")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="source HF checkpoint folder")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["bf16", "fp8"],
        help="weight dtype (trtllm-ckpt: bf16 or fp8; hf-fp8 is always fp8; default bf16)",
    )
    p.add_argument(
        "--calib-data",
        default=None,
        help="FP8 calibration text: path or builtin:python-stdlib (required for FP8)",
    )
    p.add_argument("--calib-samples", type=int, default=512, help="calibration sequences")
    p.add_argument("--calib-seq-len", type=int, default=512, help="tokens per sequence")
    p.add_argument("--kv-cache-fp8", action="store_true", help="add FP8 KV-cache scales")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (trtllm-ckpt)")
    p.add_argument("--seed", type=int, default=0, help="calibration sample order")
    p.add_argument("--no-verify", action="store_true", help="skip the read-back logit check")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")


def run(args: argparse.Namespace) -> int:
    from minitron_deploy.console import info, print_json
    from minitron_deploy.export import export_model

    dtype = args.dtype or ("fp8" if args.format == "hf-fp8" else "bf16")
    summary = export_model(
        args.model,
        args.out,
        args.format,
        dtype=dtype,
        calib_data=args.calib_data,
        calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len,
        tp=args.tp,
        kv_cache_fp8=args.kv_cache_fp8,
        seed=args.seed,
        verify=not args.no_verify,
        overwrite=args.overwrite,
    )
    v = summary.get("verify")
    check = ""
    if v:
        check = (
            f"; read back: max|dlogit| {v['max_abs_diff']:.3g}, top-1 agreement "
            f"{v['top1_agreement']:.3f}, KL/token {v['kl_per_token']:.3g}"
        )
    info(f"wrote {args.format} ({dtype}) to {args.out} in {summary['seconds']} s{check}")
    if args.json:
        print_json(summary)
    return 0
