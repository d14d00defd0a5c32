"""Read an export back and compare its logits with the source checkpoint.

BF16 formats must reproduce the bf16-rounded source exactly (HF, TensorRT-LLM BF16) or within
float32 rounding (ONNX, float32 graph). FP8 formats are compared with the float32 source:
top-1 agreement and KL(source || export) per token, and must agree on most tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import StageError

if TYPE_CHECKING:
    import torch

ONNX_TOL = 1e-3  # float32 graph vs float32 torch: reordered sums only
FP8_MIN_TOP1 = 0.5  # garbage (e.g. scales ignored) agrees on ~1/vocab of tokens


def compare_logits(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """max |diff|, top-1 agreement and mean KL(ref || got) per token of two [b, s, v] tensors."""
    import torch

    ref, got = ref.float(), got.float()
    kl = torch.nn.functional.kl_div(
        got.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    return {
        "max_abs_diff": float((ref - got).abs().max()),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
        "kl_per_token": float(kl.mean()),
    }


def probe_tokens(vocab_size: int, batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    """Fixed pseudo-random token rows for read-back checks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=g)


def verify_export(model_dir: str | Path, out: str | Path, fmt: str) -> dict[str, Any]:
    """Load the export in `out` with its reader and compare logits with `model_dir`.

    Returns:
        The comparison metrics plus `reference` (what the export was compared with).

    Raises:
        StageError: the export does not reproduce the source.
    """
    import json

    from minitron_deploy.export.hf import load_hf, logits_of
    from minitron_deploy.model.io import load_llama

    out = Path(out)
    exact = fmt == "hf"
    if fmt == "trtllm-ckpt":
        tcfg = json.loads((out / "config.json").read_text())
        exact = tcfg["quantization"]["quant_algo"] is None
    bf16_ref = exact
    ref_model = load_llama(model_dir, dtype="bfloat16" if bf16_ref else "float32").float()
    tokens = probe_tokens(ref_model.config.vocab_size)
    ref = logits_of(ref_model, tokens)
    if fmt == "hf":
        got = logits_of(load_hf(out), tokens)
    elif fmt == "hf-fp8":
        from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint

        got = logits_of(load_fp8_checkpoint(out, dequantize=False), tokens)
    elif fmt == "trtllm-ckpt":
        from minitron_deploy.export.trtllm_ckpt import load_trtllm_checkpoint

        got = logits_of(load_trtllm_checkpoint(out), tokens)
    elif fmt == "onnx":
        import torch

        from minitron_deploy.export.onnx import onnx_session, run_onnx

        got = torch.from_numpy(run_onnx(onnx_session(out), tokens.numpy())[0])
    else:
        raise StageError(f"no reader for format {fmt!r}")
    m: dict[str, Any] = compare_logits(ref, got)
    m["reference"] = "source in bf16" if bf16_ref else "source in float32"
    finite = bool(got.isfinite().all())
    if exact:
        ok = finite and m["max_abs_diff"] == 0.0
        need = "identical logits"
    elif fmt == "onnx":
        ok = finite and m["max_abs_diff"] <= ONNX_TOL
        need = f"max |diff| <= {ONNX_TOL}"
    else:
        ok = finite and m["top1_agreement"] >= FP8_MIN_TOP1
        need = f"top-1 agreement >= {FP8_MIN_TOP1}"
    if not ok:
        raise StageError(
            f"{fmt} export failed its read-back check ({need}; got {m})",
            where=str(out),
            fix="this is a bug in the exporter; please report it with the source checkpoint",
        )
    return m
