"""`Fp8Linear`: a static per-tensor W8A8 FP8 linear layer, shared by the FP8 reader and the
built-in engine.

Follows Model-Optimizer's HF export: float8_e4m3fn weight [out, in] with per-tensor float32
`weight_scale` and `input_scale` (scale = amax / 448). The input is quantized with the static
input scale. On CUDA with dims divisible by 16 the GEMM is `torch._scaled_mm` (a real FP8 GEMM
on Hopper/Ada); elsewhere it is emulated exactly in float32 (the same FP8 operands), because
torch's CPU `_scaled_mm` is a slow reference kernel and cuBLASLt refuses odd dims.
"""

from __future__ import annotations

import torch

from minitron_deploy.errors import InputError
from minitron_deploy.quant.fp8 import dequantize_fp8, quantize_fp8


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
        xq, _ = quantize_fp8(x.reshape(-1, shape[-1]), self.input_scale)
        if self._fp8_gemm(x.device):
            # The second operand must be column-major: W8 is [out, in] row-major, so W8.t() is.
            y = torch._scaled_mm(
                xq,
                self.weight.t(),
                scale_a=self.input_scale,
                scale_b=self.weight_scale,
                out_dtype=out_dtype,
            )
        else:
            if self._w_float is None or self._w_float.device != x.device:
                self._w_float = dequantize_fp8(self.weight, self.weight_scale)
            y = (dequantize_fp8(xq, self.input_scale) @ self._w_float.t()).to(out_dtype)
        return y.reshape(*shape[:-1], y.shape[-1])
