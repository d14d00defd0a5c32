"""Rough time and disk estimates of each stage, for `plan`, the ETA while a run goes, and the
estimate `make demo` prints before it starts.

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

from typing import Any

from minitron_deploy.model.shapes import LlamaShape

# What `plan` states: a run's total time is within this factor of its estimate (measured by
# benchmarks/estimates.py on both kinds of CPU host; see benchmarks/results/estimates.md).
ACCURACY = 2.0
# The probe's matmul size: big enough to reach the rate the stages' GEMMs reach.
PROBE_SIZE = 1024
# Share of the probe's GEMM rate each kind of work reaches, per compute dtype, and fixed seconds
# per stage. float32: fitted to `make demo` on an AVX2 host (2 cores, 14:49 estimated, 14:33 run).
# bfloat16 distill: the demo's distillation ran at 334 tokens/s on an idle 2-core AVX512-BF16
# EPYC (issue 29), 0.69 GFLOP a token, i.e. 0.76 of this machine's on-CPU bf16 probe (302.5);
# the rest as float32 until measured on an idle machine (see benchmarks/results/estimates.md).
EFFICIENCY = {
    "float32": {"importance": 0.55, "prune": 0.5, "distill": 0.55, "export": 0.3, "bench": 0.8},
    "bfloat16": {"importance": 0.55, "prune": 0.5, "distill": 0.75, "export": 0.3, "bench": 0.8},
}
for _eff in EFFICIENCY.values():
    _eff.setdefault("search", _eff["distill"])
    _eff.setdefault("eval", 0.6)
# A student whose shape is known only at run time (a search's winner) counts as this share of
# its teacher's FLOPs.
UNKNOWN_STUDENT = 0.5
FIXED_S = {"source": 2, "importance": 5, "prune": 3, "distill": 10, "export": 4, "package": 1}
FIXED_S |= {"data": 3}
FIXED_S |= {"bench": 10, "search": 30, "eval": 15}


def _shape(d: dict | None) -> LlamaShape | None:
    return LlamaShape.from_config(d) if d else None


def _fwd(shape: LlamaShape, tokens: float, ctx: float, lm_head: bool = True) -> float:
    flops = shape.forward_flops_per_token(ctx)
    if not lm_head:
        flops -= 2.0 * shape.vocab_size * shape.hidden_size
    return tokens * flops


def stage_flops(node: Any) -> float | None:
    """FLOPs of the node's work, or None when the model's shape is not known."""
    c, shapes = node.config, node.meta.get("shapes", {})
    stage = node.stage
    if stage == "importance":
        s = _shape(shapes.get("model"))
        if s is None:
            return None
        imp = c.importance
        flops = _fwd(s, imp.num_samples * imp.seq_len, imp.seq_len / 2, lm_head=False)
        for k in imp.layer_loss_blocks:
            runs = s.num_hidden_layers - k + 2
            flops += runs * _fwd(s, imp.val_samples * imp.seq_len, imp.seq_len / 2)
        return flops
    if stage == "prune":
        s = _shape(shapes.get("model"))
        if s is None or c.validation is None:
            return 0.0 if s is not None else None
        from minitron_deploy.compress.layers import DEPTH_METRICS, drop_count

        n, seq = c.prune.ranking_rows
        k = max(drop_count(c.prune, s.num_hidden_layers), 1)
        # layerseq: the block size comes from the depth-metric table (was == "single_loss")
        k = DEPTH_METRICS[c.prune.layer_metric].loss_block(k)
        runs = s.num_hidden_layers - k + 1  # every block position, each without k layers
        kept = s.num_hidden_layers - k
        full = _fwd(s, n * seq, seq / 2)
        body = _fwd(s, n * seq, seq / 2, lm_head=False)
        head = full - body
        return full + runs * (kept * body / s.num_hidden_layers + head)
    if stage == "distill":
        t, st = _shape(shapes.get("teacher")), _shape(shapes.get("student"))
        if t is None:
            return None
        d = c.distill
        seq = d.seq_len
        train = d.steps * d.global_batch * seq
        evals = (d.steps // d.eval_every if d.eval_every else 0) + 2
        ratio = 1.0 if st is not None else UNKNOWN_STUDENT
        st = st or t
        step = _fwd(t, train, seq / 2) + 3 * ratio * _fwd(st, train, seq / 2)
        return step + evals * ratio * _fwd(st, d.eval_samples * seq, seq / 2) * 2 * (
            1 + len(getattr(c, "holdout", ()))
        )
    if stage == "search":
        return _search_flops(c, _shape(shapes.get("model")))
    if stage == "eval":
        s = _shape(shapes.get("model"))
        if s is None:
            return None
        items = (c.eval.limit or 400) * len(c.eval.tasks)
        return _fwd(s, items * 500, 80)  # ~3 requests of ~160 tokens per item (offline tasks)
    if stage == "export":
        s = _shape(shapes.get("model"))
        if s is None:
            return None
        st = c.settings
        flops = _fwd(s, 48, 12)  # the read-back
        if st.dtype == "fp8":
            # contracts: defaults from ExportOptions (one model), not a second `or 512`
            n, seq = st.get("calib_samples"), st.get("calib_seq_len")
            flops += _fwd(s, n * seq, seq / 2)  # calibration
        return flops
    if stage == "bench":
        from minitron_deploy.bench.matrix import request_flops

        b = c.bench
        total = 0.0
        known = [x for x in (_shape(shapes.get(n)) for n in c.members) if x is not None]
        for name, batch in zip(c.members, b.batch or (), strict=False):
            s = _shape(shapes.get(name))
            if s is None and not known:
                return None
            scale = 1.0 if s is not None else UNKNOWN_STUDENT
            s = s or max(known, key=lambda x: x.num_parameters)
            for isl, osl in b.pairs():
                total += (b.warmup + b.repeats) * batch * scale * request_flops(s, isl, osl)
        return total
    return 0.0


def _search_flops(c: Any, s: LlamaShape | None) -> float | None:
    """Zero-shot losses, speed measurements and the short distillations of a search, with
    every candidate counted at `UNKNOWN_STUDENT` of the source."""
    if s is None:
        return None
    from minitron_deploy.bench.matrix import request_flops

    sc, h = c.search, UNKNOWN_STUDENT
    flops = sc.max_candidates * h * _fwd(s, sc.val_samples * sc.val_seq_len, sc.val_seq_len / 2)
    if sc.budget.min_speedup is not None and c.bench is not None:
        (b0, b1), measure, calib = sc.speed
        # (search) top_k per family (3 families) + 2 seed shapes re-ranked
        shapes = calib + 3 * sc.top_k + 2 if measure == "model" else sc.max_candidates * 2
        runs = c.bench.warmup + c.bench.repeats
        for isl, osl in c.bench.pairs():
            one = runs * request_flops(s, isl, osl)
            flops += 2 * b0 * one + shapes * b1 * h * one  # the source twice, each candidate
    d = c.distill
    # (search) the short distillations, and the agreement check's longer ones
    train = (sc.steps + (sc.agreement_steps or 0)) * d.global_batch * d.seq_len
    evals = 2 * 2 * h * _fwd(s, d.eval_samples * d.seq_len, d.seq_len / 2)
    flops += (3 * sc.top_k + 2) * (_fwd(s, train, d.seq_len / 2) * (1 + 3 * h) + evals)
    return flops


# Preparing text: characters per second through the fast tokenizer (SmolLM2's, 2 cores), and
# bytes of token shards per byte of text (uint16 tokens of ~4 characters).
PREPARE_CHARS_PER_S = 2.3e6
SHARD_BYTES_PER_CHAR = 0.6


def _text_bytes(node: Any) -> int | None:
    from minitron_deploy.data.refs import is_prepared
    from minitron_deploy.data.text import source_bytes

    if is_prepared(node.config.source):
        return 0  # referenced, not prepared again
    return source_bytes(node.config.source)


def stage_bytes(node: Any) -> float | None:
    """Bytes the node's artifact holds (checkpoints at 2 bytes a parameter, FP8 at ~1)."""
    shapes = node.meta.get("shapes", {})
    stage = node.stage
    if stage == "data":
        n = _text_bytes(node)
        return None if n is None else n * SHARD_BYTES_PER_CHAR
    if stage in ("source", "prune", "distill", "package", "export"):
        role = "student" if stage == "distill" else "model"
        s = _shape(shapes.get(role))
        if s is None:
            return None
        if stage == "prune" and node.config.prune is not None:
            from minitron_deploy.compress.plan import plan_prune

            s = plan_prune(s, node.config.prune).target  # scale: the one PrunePlan
        params = s.num_parameters
        if stage == "export":
            fmt, st = node.config.format, node.config.settings
            if fmt == "onnx":
                return 4.0 * params
            if st.dtype == "fp8":
                emb = s.vocab_size * s.hidden_size * (1 if s.tie_word_embeddings else 2)
                return 1.0 * (params - emb) + 2.0 * emb
            return 2.0 * params
        if stage == "package" and not node.config.package.copy_model:
            return 0.0
        if stage == "source" and not str(node.config.source).startswith("builtin:"):
            return 0.0  # referenced, not copied
        return 2.0 * params
    return 1e6  # scores, reports


def seconds(stage: str, flops: float, gflops: float, dtype: str) -> float:
    """Seconds of `flops` of a stage's work at `gflops` probe GFLOP/s in `dtype`."""
    eff = EFFICIENCY.get(dtype, EFFICIENCY["float32"]).get(stage, 0.3)
    return FIXED_S.get(stage, 1) + flops / (gflops * 1e9 * eff)


def estimate(node: Any, gflops: float, dtype: str = "float32") -> tuple[float | None, float | None]:
    """(seconds, bytes) of a node on a machine doing `gflops` GEMM GFLOP/s in `dtype`, the
    compute dtype the run will use."""
    if node.stage == "data":
        n = _text_bytes(node)
        secs = None if n is None else FIXED_S["data"] + n / PREPARE_CHARS_PER_S
        return secs, stage_bytes(node)
    flops = stage_flops(node)
    secs = None if flops is None else seconds(node.stage, flops, gflops, dtype)
    return secs, stage_bytes(node)


def machine_gflops() -> tuple[float, str]:
    """(GEMM GFLOP/s, dtype): this CPU's rate in the dtype `auto` computes in, which the run
    will use (a cached probe; a dtype the CPU only emulates gets the small probe, which is
    already slow enough to say so)."""
    from minitron_deploy.hardware import auto_dtype_name, gemm_gflops, native_dtypes

    dtype = auto_dtype_name("cpu")
    size = PROBE_SIZE if dtype in native_dtypes("cpu") else 256
    return gemm_gflops(dtype, size), dtype
