"""Rough time and disk estimates, for `plan`, the ETA while a run goes, and the estimate
`make demo` prints before it starts: the shared FLOP helpers and calibrated factors. Each stage's
own estimate (its FLOPs and bytes) is its module's `estimate` (`pipeline/stages/<stage>.py`).

Time = FLOPs of the stage's work / (this machine's GEMM rate in the compute dtype the run will
use x the share of that rate the stage reaches in that dtype) + a fixed part (loading models,
writing files). The GEMM rate is a probe of a 1024^3 matmul in that dtype on this machine (a
256^3 one ran bf16 below float32 here, far from what the stages reach). The shares and fixed parts
are calibrated by `benchmarks/estimates.py` (plan, then run, then predicted vs actual per stage,
on the demo profile and ci-tiny, in bfloat16 and float32: benchmarks/results/estimates.md); a
run's total is meant to be within `ACCURACY`x, not to the minute. Disk = the bytes a stage leaves
in the cache.
"""

from __future__ import annotations

from typing import NamedTuple

from minitron_deploy import hardware
from minitron_deploy.model.shapes import LlamaShape

# What `plan` states: a run's total time is within this factor of its estimate (measured by
# benchmarks/estimates.py on both kinds of CPU host; see benchmarks/results/estimates.md).
ACCURACY = 2.0
# The probe's matmul size: big enough to reach the rate the stages' GEMMs reach.
PROBE_SIZE = 1024
# Share of the probe's GEMM rate each kind of work reaches, per compute dtype, and fixed seconds
# per stage: `benchmarks/estimates.py --calibrate` on the demo profile and ci-tiny, each in
# bfloat16 and float32 (forced), on a 2-core AMD EPYC with AVX512-BF16 (2026-12-02; fixed parts
# from ci-tiny, shares from the demo; a quiet run's wall seconds). An eval share above 1: its
# FLOP count is an upper bound (lm-eval's requests share context). See
# benchmarks/results/estimates.md.
EFFICIENCY = {
    "float32": {"importance": 0.665, "prune": 0.692, "distill": 0.582, "export": 0.323,
                "bench": 0.667, "eval": 1.797},
    "bfloat16": {"importance": 0.646, "prune": 0.631, "distill": 0.417, "export": 0.078,
                 "bench": 0.66, "eval": 4.135},
}  # fmt: skip
for _eff in EFFICIENCY.values():
    _eff.setdefault("search", _eff["distill"])
# A student whose shape is known only at run time (a search's winner) counts as this share of
# its teacher's FLOPs.
UNKNOWN_STUDENT = 0.5
FIXED_S = {"source": 0.0, "importance": 0.1, "prune": 0.3, "distill": 1.3, "export": 1.2}
FIXED_S |= {"package": 0.0, "data": 0.2, "bench": 0.8}
FIXED_S |= {"search": 30, "eval": 15}  # not in ci-tiny: not calibrated
# Preparing text: characters per second through the fast tokenizer (SmolLM2's, 2 cores), and
# bytes of token shards per byte of text (uint16 tokens of ~4 characters).
PREPARE_CHARS_PER_S = 1.03e6
SHARD_BYTES_PER_CHAR = 0.6


class Estimate(NamedTuple):
    """A node's estimate: seconds and bytes (None where the model's shape is unknown), and
    the FLOPs the seconds were computed from (None for work not counted in FLOPs)."""

    seconds: float | None
    bytes: float | None
    flops: float | None = None


def shape_of(d: dict | None) -> LlamaShape | None:
    """The shape of a config dict (a node's `meta["shapes"]` entry), None when unknown."""
    return LlamaShape.from_config(d) if d else None


def fwd(shape: LlamaShape, tokens: float, ctx: float, lm_head: bool = True) -> float:
    """FLOPs of a forward pass over `tokens` tokens at mean context `ctx`."""
    flops = shape.forward_flops_per_token(ctx)
    if not lm_head:
        flops -= 2.0 * shape.vocab_size * shape.hidden_size
    return tokens * flops


def seconds(stage: str, flops: float, gflops: float, dtype: str) -> float:
    """Seconds of `flops` of a stage's work at `gflops` probe GFLOP/s in `dtype`."""
    eff = EFFICIENCY.get(dtype, EFFICIENCY["float32"]).get(stage, 0.3)
    return FIXED_S.get(stage, 1) + flops / (gflops * 1e9 * eff)


def timed(
    stage: str, flops: float | None, size: float | None, gflops: float, dtype: str
) -> Estimate:
    """The estimate of `flops` of a stage's work (None: unknown) leaving `size` bytes."""
    secs = None if flops is None else seconds(stage, flops, gflops, dtype)
    return Estimate(secs, size, flops)


def checkpoint_bytes(shape: LlamaShape) -> float:
    """Bytes of a bf16 checkpoint of `shape` (2 a parameter)."""
    return 2.0 * shape.num_parameters


def machine_gflops() -> tuple[float, str]:
    """(GEMM GFLOP/s, dtype): this CPU's rate in the dtype `auto` computes in, which the run
    will use (a cached probe; a dtype the CPU only emulates gets the small probe, which is
    already slow enough to say so)."""
    dtype = hardware.auto_dtype_name("cpu")
    size = PROBE_SIZE if dtype in hardware.native_dtypes("cpu") else 256
    return hardware.gemm_gflops(dtype, size), dtype  # looked up here: a test stands in for it
