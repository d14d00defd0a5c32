"""Where an FP8 linear's time goes on a GPU, at the decode batch sizes of the throughput matrix.

Llama-3.1-8B's four decoder GEMMs (fused QKV 4096->6144, O 4096->4096, fused gate/up
4096->28672, down 14336->4096) stacked `--layers` deep, each variant captured in one CUDA graph
(as the built-in engine decodes) and replayed; rounds interleave the variants; per-round ratios
against the BF16 linear give medians with order-statistic intervals. Variants:

- `bf16`: `F.linear` in bfloat16 (the baseline);
- `fp8`: `quant.linear.Fp8Linear` as the engine runs it (static input scale, the input
  quantization as one compiled kernel, `_scaled_mm`);
- `fp8-eager-quant`: the same with the quantization as four eager kernels (float32 cast, divide,
  clamp, float8 cast), as `Fp8Linear` ran it before;
- `fp8-gemm-only`: `_scaled_mm` on an input quantized beforehand (the FP8 GEMM's own time,
  the lower bound for any quantization).

    python benchmarks/fp8_linear_speed.py              # CUDA with FP8 (Ada/Hopper), ~1 minute
    python benchmarks/fp8_linear_speed.py --dry-run    # tiny dims, CPU, no graphs (smoke test)

Last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from minitron_deploy.quant.fp8 import FP8_MAX, quantize_fp8  # noqa: E402
from minitron_deploy.quant.linear import Fp8Linear, quantize_input  # noqa: E402
from minitron_deploy.stats import median_interval  # noqa: E402

GEMMS_8B = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]  # (in, out)
GEMMS_TINY = [(64, 96), (64, 64), (64, 320), (160, 64)]


def build(gemms, layers: int, m: int, device: str):
    """Per linear: bf16 weight, its Fp8Linear and a bf16 input of M rows."""
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for _ in range(layers):
        for k, n in gemms:
            w = (torch.randn(n, k, generator=g) * k**-0.5).to(device, torch.bfloat16)
            x = torch.randn(m, k, generator=g).to(device, torch.bfloat16)
            wq, ws = quantize_fp8(w)
            xs = x.float().abs().max() / FP8_MAX
            lin = Fp8Linear(wq, ws, xs, out_dtype=torch.bfloat16)
            out.append((w, x, lin, quantize_fp8(x, xs)[0]))
    return out


def variants(stack, fp8_gemm: bool):
    def bf16():
        return [torch.nn.functional.linear(x, w) for w, x, _, _ in stack]

    def fp8():
        return [lin(x) for _, x, lin, _ in stack]

    def mm(xq, lin):
        if not fp8_gemm:  # CPU smoke test: the emulated GEMM
            return xq.float() @ lin.weight.float().t()
        return torch._scaled_mm(
            xq,
            lin.weight.t(),
            scale_a=lin.input_scale,
            scale_b=lin.weight_scale,
            out_dtype=torch.bfloat16,
        )

    def eager_quant():
        return [mm(quantize_input(x, lin.input_scale), lin) for _, x, lin, _ in stack]

    def gemm_only():
        return [mm(xq, lin) for _, _, lin, xq in stack]

    return {
        "bf16": bf16,
        "fp8": fp8,
        "fp8-eager-quant": eager_quant,
        "fp8-gemm-only": gemm_only,
    }


def timer(fn, device: str, graphs: bool):
    """A callable that runs `fn` once (replaying its CUDA graph on CUDA) and returns seconds."""
    if not graphs:

        def run_eager() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        return run_eager
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()

    def run_graph() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    return run_graph


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="32,64", help="decode rows M (comma-separated)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=10, help="replays per round (median taken)")
    ap.add_argument("--dry-run", action="store_true", help="tiny dims on CPU, no graphs")
    args = ap.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run for the CPU smoke test)", file=sys.stderr)
        return 2
    gemms = GEMMS_TINY if args.dry_run else GEMMS_8B
    result = {
        "benchmark": "fp8_linear_speed",
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "gemms_in_out": gemms,
        "layers": args.layers,
        "rounds": args.rounds,
        "rows": [],
    }
    for m in (int(b) for b in args.batches.split(",")):
        stack = build(gemms, args.layers, m, device)
        fns = variants(stack, fp8_gemm=device == "cuda")
        timers = {name: timer(fn, device, graphs=device == "cuda") for name, fn in fns.items()}
        times = {name: [] for name in timers}
        for _ in range(args.rounds):
            for name, t in timers.items():
                times[name].append(sorted(t() for _ in range(args.reps))[args.reps // 2])
        for name, ts in times.items():
            ratio = median_interval([b / t for b, t in zip(times["bf16"], ts, strict=True)])
            per_linear_us = median_interval(ts)["median"] / len(stack) * 1e6
            row = {"batch": m, "variant": name, "us_per_linear": per_linear_us}
            row |= {"speedup_vs_bf16": ratio["median"], "lo": ratio["lo"], "hi": ratio["hi"]}
            result["rows"].append(row)
            print(
                f"M={m:3d} {name:16s} {per_linear_us:8.2f} us/linear  "
                f"vs bf16 {ratio['median']:.2f}x [{ratio['lo']:.2f}, {ratio['hi']:.2f}]"
            )
        del stack, fns, timers
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
