"""Post-training quantization: FP8 E4M3 calibration (NVIDIA Model-Optimizer) and scale math."""

from minitron_deploy.quant.fp8 import (
    FP8_MAX,
    calibrate_fp8,
    calibration_tokens,
    dequantize_fp8,
    fp8_recipe,
    quantize_fp8,
    requantize_shared,
    require_modelopt,
    scale_from_amax,
)

__all__ = [
    "FP8_MAX",
    "calibrate_fp8",
    "calibration_tokens",
    "dequantize_fp8",
    "fp8_recipe",
    "quantize_fp8",
    "requantize_shared",
    "require_modelopt",
    "scale_from_amax",
]
