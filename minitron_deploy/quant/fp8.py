"""FP8 (E4M3) post-training quantization: calibration with NVIDIA Model-Optimizer, and the math.

The recipe is Model-Optimizer's `FP8_DEFAULT_CFG`: per-tensor FP8 weights and static per-tensor
activation (input) scales from max calibration, lm_head and embeddings left alone, optionally
FP8 KV-cache scales (`FP8_KV_CFG`). A scale maps a float tensor onto the E4M3 range:
`scale = amax / 448`, `q = clamp(x / scale, -448, 448).to(float8_e4m3fn)`, `x ~= q * scale`.
Model-Optimizer is imported lazily (a warm import takes seconds).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.console import track
from minitron_deploy.data.refs import as_split
from minitron_deploy.errors import DependencyError, InputError
from minitron_deploy.hardware import compute_dtype

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.data.shards import Split

FP8_MAX = 448.0  # largest finite float8_e4m3fn value
MIN_SCALE = 1.0 / (FP8_MAX * 512.0)  # keeps an all-zero tensor from giving scale 0


def require_modelopt():
    """Import `modelopt.torch.quantization`, or say exactly what to install.

    Raises:
        DependencyError: nvidia-modelopt (or `requests`, which it needs but does not declare)
            is missing.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "transformers X is not tested with modelopt"
            import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise DependencyError(
            f"FP8 calibration needs NVIDIA Model-Optimizer ({e})",
            fix="pip install 'nvidia-modelopt>=0.47' requests  (or: pip install -e '.[deploy]')",
        ) from e
    return mtq


def fp8_recipe(kv_cache_fp8: bool = False) -> dict[str, Any]:
    """Model-Optimizer's FP8 config (weights + inputs, max calibration), plus KV cache if asked."""
    mtq = require_modelopt()
    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    if kv_cache_fp8:
        kv = copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
        if isinstance(cfg["quant_cfg"], list):
            cfg["quant_cfg"].extend(kv if isinstance(kv, list) else [kv])
        else:  # older modelopt: dict form
            cfg["quant_cfg"].update(kv)
    return cfg


def calibration_tokens(
    model_dir: str | Path,
    calibration: DataRef | Split | None,
    *,
    num_samples: int,
    seq_len: int,
    seed: int,
) -> torch.Tensor:
    """Token rows [n, seq_len] for calibration from `calibration` (normally a train split; a
    `DataRef` is prepared with the model's tokenizer first). The sizes come from the caller
    (their defaults live in `export.format.ExportOptions`).

    Raises:
        InputError: no calibration data given, or the data source is unusable.
    """

    if calibration is None:
        raise InputError(
            "FP8 export needs calibration data to set the static activation scales",
            where="--calib-data",
            fix="pass --calib-data PATH or --calib-data builtin:python-stdlib",
        )
    return as_split(calibration, model_dir).rows(num_samples, seq_len, seed)


def calibrate_fp8(
    model: LlamaForCausalLM,
    tokens: torch.Tensor,
    *,
    kv_cache_fp8: bool = False,
    batch_size: int = 4,
    progress: bool = True,
) -> LlamaForCausalLM:
    """Insert FP8 quantizers into `model` (in place) and calibrate them on `tokens`.

    Args:
        model: a float model in eval mode (float32 is best on CPU).
        tokens: int64 [n, seq_len] calibration rows.
        kv_cache_fp8: also calibrate K and V output scales for an FP8 KV cache.
        batch_size: rows per calibration forward.
        progress: show a progress bar on stderr.

    Returns:
        The quantized model (Model-Optimizer returns the same object).
    """
    import torch

    mtq = require_modelopt()
    batches = list(torch.split(tokens, batch_size))

    dtype = compute_dtype("auto")  # the device's native dtype (float32 on AVX2-only CPUs)

    def forward_loop(m) -> None:
        it = track(batches, "FP8 calibration") if progress else batches
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            for b in it:
                m(input_ids=b, use_cache=False)

    model.config.architectures = ["LlamaForCausalLM"]  # modelopt's exporter needs it
    with contextlib.redirect_stdout(sys.stderr):  # modelopt prints; stdout is for results
        return mtq.quantize(model, fp8_recipe(kv_cache_fp8), forward_loop)


def scale_from_amax(amax: torch.Tensor | float) -> torch.Tensor:
    """Per-tensor float32 scale (0-dim) for a tensor whose largest magnitude is `amax`."""
    import torch

    amax = torch.as_tensor(amax, dtype=torch.float32).reshape(())
    return torch.clamp(amax / FP8_MAX, min=MIN_SCALE)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor | None = None):
    """Quantize to float8_e4m3fn with a per-tensor scale (computed from amax when None).

    Returns:
        (q, scale): q float8_e4m3fn of x's shape; scale float32, 0-dim.
    """
    import torch

    if scale is None:
        scale = scale_from_amax(x.detach().abs().max())
    scale = scale.to(torch.float32).reshape(())
    q = (x.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def rounding_error(x: torch.Tensor, scale: torch.Tensor, q: torch.Tensor) -> float:
    """How far FP8 codes `q` are from x / scale rounded to nearest: 0.0 when every code is
    torch's float8_e4m3fn cast of x / scale (clamped to +-448); else the largest |q - x / scale|
    over the codes that differ, in units of half the FP8 spacing at x / scale - at most 1 for a
    tie rounded the other way (or a float32 division one ulp apart), far more for a wrong
    scale, transpose or tensor."""
    import torch

    nearest, scale = quantize_fp8(x, scale)
    off = nearest.view(torch.uint8) != q.view(torch.uint8)  # codes other than torch's rounding
    if not bool(off.any()):
        return 0.0
    v, q = x.to(torch.float32)[off] / scale, q[off]
    _, e = torch.frexp(v)  # |v| = m * 2^e, m in [0.5, 1): floor(log2 |v|) = e - 1
    e = torch.where(v == 0, torch.full_like(e, -5), e)
    half = torch.ldexp(torch.ones_like(v), (e - 1).clamp(min=-6) - 4)  # E4M3: 3 mantissa bits
    return float(((q.to(torch.float32) - v).abs() / half).max())


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype=None) -> torch.Tensor:
    """`q * scale` in float32 (or `dtype`)."""
    import torch

    out = q.to(torch.float32) * scale.to(torch.float32).reshape(())
    return out if dtype is None else out.to(dtype)


def requantize_shared(parts: list[tuple[torch.Tensor, torch.Tensor]]):
    """Requantize FP8 tensors with different scales to one shared scale (the largest).

    Used for TensorRT-LLM's fused qkv, which carries one weight scale. Moving to the largest
    scale adds one more rounding to the other parts and can never overflow the FP8 range.

    Returns:
        (list of float8 tensors, shared float32 0-dim scale)
    """
    import torch

    shared = torch.stack([s.reshape(()).to(torch.float32) for _, s in parts]).max()
    out = []
    for q, s in parts:
        if torch.equal(s.reshape(()).to(torch.float32), shared):
            out.append(q)
        else:
            out.append(quantize_fp8(dequantize_fp8(q, s), shared)[0])
    return out, shared
