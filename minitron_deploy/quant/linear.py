"""`Fp8Linear`: a static per-tensor W8A8 FP8 linear layer, shared by the FP8 reader and the
built-in engine.

Follows Model-Optimizer's HF export: float8_e4m3fn weight [out, in] with per-tensor float32
`weight_scale` and `input_scale` (scale = amax / 448). The input is quantized with the static
input scale. On CUDA with dims divisible by 16 the GEMM is `torch._scaled_mm` (a real FP8 GEMM
on Hopper/Ada); elsewhere it is emulated exactly in float32 (the same FP8 operands), because
torch's CPU `_scaled_mm` is a slow reference kernel and cuBLASLt refuses odd dims.

On CUDA the input quantization (float32 cast, divide, clamp, float8 cast: four kernels in eager
mode) runs as one kernel made by `torch.compile` (shapes dynamic, compiled once per process on
first use, before any CUDA graph capture since the engine warms up first); where compiling fails
(no Triton) it stays eager, with a warning. `benchmarks/fp8_linear_speed.py` measures both.
"""

from __future__ import annotations

import logging

import torch

from minitron_deploy.errors import InputError
from minitron_deploy.quant.fp8 import dequantize_fp8, quantize_fp8

log = logging.getLogger(__name__)
_fused_quantize = None  # the compiled quantization, made on first CUDA use (False: failed)


def quantize_input(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`quant.fp8.quantize_fp8` with a given scale, the FP8 tensor only (what the fused kernel
    computes)."""
    return quantize_fp8(x, scale)[0]


def _quantize_cuda(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The input quantization as one compiled kernel, eager where compiling fails."""
    global _fused_quantize
    if torch.compiler.is_compiling():  # inside a compiled decode step: fused there already
        return quantize_input(x, scale)
    if _fused_quantize is None:
        _fused_quantize = torch.compile(quantize_input, dynamic=True)
    if _fused_quantize is not False:
        try:
            return _fused_quantize(x, scale)
        except Exception as e:  # noqa: BLE001 - any compiler failure: the eager kernels still work
            log.warning("FP8 input quantization stays eager (torch.compile failed: %s)", e)
            _fused_quantize = False
    return quantize_input(x, scale)


class Fp8Linear(torch.nn.Module):
    """y = W8A8 GEMM of x with static per-tensor scales; output in `out_dtype` (default x's).

    Args:
        weight: float8_e4m3fn [out, in].
        weight_scale: float32 scalar.
        input_scale: float32 scalar.
        out_dtype: output dtype; None = the input's dtype.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        input_scale: torch.Tensor,
        out_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if weight.dtype != torch.float8_e4m3fn:
            raise InputError(f"FP8 weight has dtype {weight.dtype}, expected float8_e4m3fn")
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale.reshape(()).float())
        self.register_buffer("input_scale", input_scale.reshape(()).float())
        self.out_dtype = out_dtype
        # The float32 weight of the emulation is made once (not during a CUDA graph capture).
        self.register_buffer("_w_float", None, persistent=False)
        if not self._fp8_gemm(weight.device):
            self._w_float = dequantize_fp8(weight, self.weight_scale)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def _fp8_gemm(self, device: torch.device) -> bool:
        return device.type == "cuda" and not any(d % 16 for d in self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out_dtype = self.out_dtype or x.dtype
        x2 = x.reshape(-1, shape[-1])
        if self._fp8_gemm(x.device):
            xq = _quantize_cuda(x2, self.input_scale)
            # The second operand must be column-major: W8 is [out, in] row-major, so W8.t() is.
            y = torch._scaled_mm(
                xq,
                self.weight.t(),
                scale_a=self.input_scale,
                scale_b=self.weight_scale,
                out_dtype=out_dtype,
            )
        else:
            xq = quantize_input(x2, self.input_scale)
            if self._w_float is None or self._w_float.device != x.device:
                self._w_float = dequantize_fp8(self.weight, self.weight_scale)
            y = (dequantize_fp8(xq, self.input_scale) @ self._w_float.t()).to(out_dtype)
        return y.reshape(*shape[:-1], y.shape[-1])
