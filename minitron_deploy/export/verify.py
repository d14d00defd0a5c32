"""Read an export back and compare its logits with the source checkpoint.

BF16 formats must reproduce the bf16-rounded source exactly (HF, TensorRT-LLM BF16) or within
float32 rounding (ONNX, float32 graph). FP8 formats are compared with the float32 source: KL(source
|| export) per token must be small (FP8_MAX_KL) and, where the source's logits decide the top
token, the export must pick it too (FP8_MIN_TOP1 on the decided positions); a format with a
tensor-level read-back (`ExportFormat.tensors`, hf-fp8: every code the nearest FP8 value of the
source weight over its scale) runs it on each source tensor as the logit pass reads it, and it
alone still proves the weights of a near-flat (random-weight) model, whose top-1 the noise of
FP8 flips. Streamed read-backs run the source and the export layer by layer in lockstep
(`model.readback.lockstep_logits`): each checkpoint is read once. Every format's rope settings,
as its consumer reads them with the installed transformers, must be the source's exactly
(`check_rope`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError, StageError
from minitron_deploy.export.format import check_tensors
from minitron_deploy.export.hf import logits_of
from minitron_deploy.export.stream import stream_read
from minitron_deploy.model.io import load_llama, read_config
from minitron_deploy.model.readback import lockstep_logits
from minitron_deploy.model.shapes import rope_settings, same_rope
from minitron_deploy.model.stream import TensorReader

if TYPE_CHECKING:
    import torch

    from minitron_deploy.export.format import ExportFormat, TensorCheck

ONNX_TOL = 1e-3  # float32 graph vs float32 torch: reordered sums only
# FP8 read-back bars, on 2 x 24 random probe tokens. Measured: correct exports give KL
# 0.004-0.007 (tiny random models) and 0.03-0.16 (SmolLM2-135M width/depth students); garbage
# (scales ignored) agrees on ~1/vocab of tokens with KL > 5. A wrong rope on a tiny model moves
# KL to only ~0.02, inside the spread of correct real exports, so rope settings are checked
# exactly instead (`check_rope`), as the consumer's transformers reads them.
# Top-1 is judged only where the source decides it: its best token leads the runner-up by at
# least FP8_DECIDED_MARGIN nats (SmolLM2-135M's FP8 export: 12 of 48 probe positions, all kept;
# a position within the margin may flip by rounding alone). Random-weight models are near-flat
# (8B shape: logit spread ~1.3 over 128k tokens, the top two typically ~0.3 nat apart): with
# fewer than FP8_MIN_DECIDED decided positions the top-1 bar does not apply and the verdict
# rests on KL and the tensor-level read-back. Near-ties (within FP8_TOP1_TOL nats of the best)
# count as agreement; exact agreement over all positions is reported.
FP8_DECIDED_MARGIN = 1.0
FP8_MIN_DECIDED = 8
FP8_MIN_TOP1 = 0.75
FP8_TOP1_TOL = 0.1
FP8_MAX_KL = 0.5


def compare_logits(ref: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    """max |diff|, top-1 agreement (exact, and within FP8_TOP1_TOL nats of the reference's best:
    over all positions and over the `decided` ones, where the reference's best leads its
    runner-up by FP8_DECIDED_MARGIN; None when there are none) and mean KL(ref || got) per token
    of two [b, s, v] tensors."""
    import torch

    ref, got = ref.float(), got.float()
    ref_lp = ref.log_softmax(-1)
    kl = torch.nn.functional.kl_div(
        got.log_softmax(-1), ref_lp, log_target=True, reduction="none"
    ).sum(-1)
    chosen = ref_lp.gather(-1, got.argmax(-1, keepdim=True)).squeeze(-1)
    near = chosen >= ref_lp.max(-1).values - FP8_TOP1_TOL
    top2 = ref_lp.topk(min(2, ref_lp.shape[-1]), -1).values
    decided = top2[..., 0] - top2[..., -1] >= FP8_DECIDED_MARGIN
    return {
        "max_abs_diff": float((ref - got).abs().max()),
        "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
        "top1_near_agreement": float(near.float().mean()),
        "decided": int(decided.sum()),
        "top1_decided_agreement": float(near[decided].float().mean()) if decided.any() else None,
        "kl_per_token": float(kl.mean()),
    }


def fp8_verdict(m: dict[str, Any]) -> tuple[bool, str]:
    """(pass, what was required) of FP8 logit metrics from `compare_logits`."""
    need = f"KL/token <= {FP8_MAX_KL}"
    ok = m["kl_per_token"] <= FP8_MAX_KL
    if m["decided"] >= FP8_MIN_DECIDED:
        need += (
            f" and top-1 agreement >= {FP8_MIN_TOP1} on the {m['decided']} positions the source"
            f" decides (best ahead by >= {FP8_DECIDED_MARGIN} nat)"
        )
        ok = ok and m["top1_decided_agreement"] >= FP8_MIN_TOP1
    else:
        need += (
            f"; top-1 not judged: the source decides {m['decided']} of the probe positions "
            f"(< {FP8_MIN_DECIDED}: near-flat logits)"
        )
    return ok, need


def probe_tokens(vocab_size: int, batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    """Fixed pseudo-random token rows for read-back checks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=g)


def verify_export(model_dir: str | Path, out: str | Path, fmt: ExportFormat, dtype: str) -> dict:
    """Load the export in `out` with its format's reader and compare logits with `model_dir`.

    Returns:
        The comparison metrics plus `reference` (what the export was compared with).

    Raises:
        StageError: the export does not reproduce the source (a bug in the exporter).
    """

    if fmt.read is None:
        return {"skipped": f"no reader for {fmt.name}"}
    kind = fmt.check(dtype)
    check = _opened(fmt.name, out, fmt.tensors, model_dir) if fmt.tensors is not None else None
    stream = stream_read(fmt.name, dtype)
    if stream is not None:  # scale: both sides one decoder layer at a time, never whole
        ref, got = _streamed(model_dir, Path(out), stream, fmt.name, kind == "exact", check)
        tensor_level = check.result() if check is not None else {}
    else:
        tensor_level = check_tensors(check, model_dir) if check is not None else {}
        ref_model = load_llama(model_dir, dtype="bfloat16" if kind == "exact" else "float32")
        ref_model = ref_model.float()
        tokens = probe_tokens(ref_model.config.vocab_size)
        ref = logits_of(ref_model, tokens)
        del ref_model
        got = fmt.read(Path(out))(tokens)
    m: dict[str, Any] = {**compare_logits(ref, got), **tensor_level}
    m["reference"] = "source in bf16" if kind == "exact" else "source in float32"
    m["read_back"] = "layer by layer" if stream is not None else "whole model"
    m.update(check_rope(model_dir, out, fmt))
    finite = bool(got.isfinite().all())
    if kind == "exact":
        ok, need = finite and m["max_abs_diff"] == 0.0, "identical logits"
    elif kind == "float32":
        ok, need = finite and m["max_abs_diff"] <= ONNX_TOL, f"max |diff| <= {ONNX_TOL}"
    else:
        ok, need = fp8_verdict(m)
        ok = finite and ok
    if not ok:
        raise StageError(
            f"{fmt.name} export failed its read-back check ({need}; got {m})",
            where=str(out),
            fix="this is a bug in the exporter; please report it with the source checkpoint",
        )
    m["bar"] = need  # what was required (FP8 on near-flat logits: that top-1 was not judged)
    return m


def _streamed(
    model_dir: Path | str,
    out: Path,
    stream: Any,
    name: str,
    exact: bool,
    check: TensorCheck | None = None,
):
    """(source logits, export logits) on the probe tokens, both computed one decoder layer at a
    time in lockstep (`lockstep_logits`): the source rounded to bf16 (`exact`) or in float32,
    the export through its tensor reader; `check` sees each source tensor as it is read. The
    same float32 computation as the stock model's (tests/unit/test_stream.py)."""
    import torch

    cfg = read_config(model_dir)
    reader = TensorReader(model_dir)
    tokens = probe_tokens(int(cfg["vocab_size"]))
    dtype = torch.bfloat16 if exact else torch.float32

    def source(n: str) -> torch.Tensor:
        w = reader.get(n)
        if check is not None:
            check.see(n, w)
        return w.to(dtype)

    out_cfg, get, linear = _opened(name, out, stream)
    sides = [(cfg, source, None), (out_cfg, get, linear)]
    ref, got = lockstep_logits(sides, tokens, progress=f"{name} read-back (by layer)")
    return ref, got


def _opened(name: str, out: Path | str, open_: Any, *first: Any) -> Any:
    """`open_(*first, out)`: a reader of the export; one it cannot open is the exporter's bug.

    Raises:
        StageError: the export is incomplete or unreadable.
    """
    try:
        return open_(*first, out)
    except (InputError, KeyError, OSError) as e:
        raise StageError(
            f"{name} export cannot be read back ({e})",
            where=str(out),
            fix="this is a bug in the exporter; please report it with the source checkpoint",
        ) from e


def check_rope(model_dir: str | Path, out: str | Path, fmt: ExportFormat) -> dict[str, Any]:
    """The rope settings the export's consumer reads must be the source's.

    Raises:
        StageError: they differ (e.g. a config only transformers 5 reads right).
    """

    if fmt.rope is None:
        return {}
    want, got = rope_settings(read_config(model_dir)), fmt.rope(Path(out))
    if not same_rope(want, got):
        raise StageError(
            f"{fmt.name} export's rope settings read as theta={got[0]}, scaling={got[1]} but the "
            f"source has theta={want[0]}, scaling={want[1]}",
            where=str(out),
            fix="this is a bug in the exporter's config; please report it",
        )
    return {"rope_theta": got[0], "rope_type": (got[1] or {}).get("rope_type", "default")}
