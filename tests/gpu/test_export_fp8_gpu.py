"""FP8 reader on CUDA: the real FP8 GEMM (`torch._scaled_mm`) agrees with the CPU emulation."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
    pytest.skip("needs a CUDA GPU with FP8 (sm_89+)", allow_module_level=True)


def test_fp8_linear_scaled_mm_on_gpu_matches_cpu_emulation():
    from minitron_deploy.quant import dequantize_fp8, quantize_fp8
    from minitron_deploy.quant.linear import Fp8Linear

    g = torch.Generator().manual_seed(0)
    w = torch.randn(208, 96, generator=g) * 0.05  # FP8 GEMM wants dims that are multiples of 16
    x = torch.randn(32, 96, generator=g)
    w8, ws = quantize_fp8(w)
    _, xs = quantize_fp8(x)
    layer = Fp8Linear(w8.cuda(), ws.cuda(), xs.cuda())
    got = layer(x.cuda()).cpu()
    assert layer._fp8_gemm(x.cuda().device) and layer._w_float is None  # the real FP8 GEMM
    xq, _ = quantize_fp8(x, xs)
    want = dequantize_fp8(xq, xs) @ dequantize_fp8(w8, ws).t()
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


def test_fused_input_quantization_equals_the_eager_kernels_on_gpu():
    from minitron_deploy.quant import linear

    g = torch.Generator().manual_seed(1)
    s = torch.tensor(0.01)
    for rows in (32, 64, 4096):  # decode and prefill row counts: one compile, shapes dynamic
        x = (torch.randn(rows, 4096, generator=g) * 3).to("cuda", torch.bfloat16)
        fused = linear._quantize_cuda(x, s.cuda())
        assert linear._fused_quantize is not False, "torch.compile failed on this GPU"
        eager = linear.quantize_input(x, s.cuda())
        assert fused.dtype == torch.float8_e4m3fn
        assert torch.equal(fused.view(torch.uint8), eager.view(torch.uint8))
