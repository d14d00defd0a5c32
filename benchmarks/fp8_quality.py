"""FP8 (Model-Optimizer PTQ) vs BF16 quality on held-out text, measured on the exported checkpoint.

Calibrates on the train split of `--calib-data`, exports with `export_model(fmt="hf-fp8")`,
reads the export back with our reader in two modes (weight-only dequantized, and W8A8 with
static input scales, FP8 GEMM emulated in float32 on CPU) and compares with the BF16 source on the
validation split: LM loss, loss delta, top-1 agreement and KL(bf16 || fp8) per token.

    python benchmarks/fp8_quality.py                      # SmolLM2-135M, ~3 min on 2 CPU cores
    python benchmarks/fp8_quality.py --calib-samples 512  # the export default (slower)

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def evaluate(model, rows):
    """(mean loss, list of per-row float32 log-probs) over rows, one row at a time."""
    import torch

    losses, logps = [], []
    with torch.no_grad():
        for r in rows:
            logits = model(input_ids=r[None], use_cache=False).logits.float()[0]
            lp = logits.log_softmax(-1)
            losses.append(-lp[:-1].gather(-1, r[1:, None]).mean())
            logps.append(lp)
    return float(torch.stack(losses).mean()), logps


def compare(ref_lp, got_lp) -> dict[str, float]:

    top1, kl, n = 0.0, 0.0, 0
    for a, b in zip(ref_lp, got_lp, strict=True):
        top1 += float((a.argmax(-1) == b.argmax(-1)).sum())
        kl += float((a.exp() * (a - b)).sum())
        n += a.shape[0]
    return {"top1_agreement": top1 / n, "kl_per_token": kl / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="built-in name or checkpoint folder")
    ap.add_argument("--calib-data", default="builtin:python-stdlib")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--eval-data", default="builtin:python-stdlib", help="validation split used")
    ap.add_argument("--eval-rows", type=int, default=8)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from minitron_deploy.console import info
    from minitron_deploy.data.refs import DataRef, load_tokens
    from minitron_deploy.export import export_model
    from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint
    from minitron_deploy.model.io import load_llama
    from minitron_deploy.model.teacher import BUILTIN_MODELS, builtin_model

    if args.threads:
        torch.set_num_threads(args.threads)
    src = builtin_model(args.model) if args.model in BUILTIN_MODELS else Path(args.model)
    rows = load_tokens(
        src,
        DataRef(source=args.eval_data, split="validation"),
        num_samples=args.eval_rows,
        seq_len=args.eval_seq_len,
    )
    result: dict = {
        "model": args.model,
        "calib": f"{args.calib_data} train split, {args.calib_samples} x {args.calib_seq_len}",
        "eval": f"{args.eval_data} validation split, {rows.shape[0]} x {rows.shape[1]} tokens",
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_model(
            src,
            Path(tmp) / "fp8",
            "hf-fp8",
            calib_data=args.calib_data,
            calib_samples=args.calib_samples,
            calib_seq_len=args.calib_seq_len,
            verify=False,
        )
        result["export_seconds"] = round(time.perf_counter() - t0, 1)
        bf16_loss, ref_lp = evaluate(load_llama(src, dtype="bfloat16").float(), rows)
        result["bf16_loss"] = round(bf16_loss, 4)
        for mode, deq in (("fp8_weight_only", True), ("fp8_w8a8", False)):
            loss, lp = evaluate(load_fp8_checkpoint(Path(tmp) / "fp8", dequantize=deq), rows)
            result[mode] = {
                "loss": round(loss, 4),
                "loss_delta": round(loss - bf16_loss, 4),
                **{k: round(v, 5) for k, v in compare(ref_lp, lp).items()},
            }
            info(f"{mode}: {result[mode]}")
    info(
        f"{args.model}: bf16 loss {result['bf16_loss']}; FP8 W8A8 loss "
        f"{result['fp8_w8a8']['loss']} (delta {result['fp8_w8a8']['loss_delta']:+.4f}), "
        f"top-1 agreement {result['fp8_w8a8']['top1_agreement']:.4f}, "
        f"KL/token {result['fp8_w8a8']['kl_per_token']:.5f}"
    )
    from minitron_deploy.hardware import processor

    result["processor"] = processor()
    print(f"processor: {result['processor']['summary']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
