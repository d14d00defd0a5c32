"""The throughput matrix: models x ISL/OSL pairs, one batch per model, interleaved repeats.

Every request produces exactly OSL new tokens (EOS ignored), as `trtllm-bench --eos_id -1` does.
For each ISL/OSL pair all variants are warmed up, then the repeats run round-robin (base, A, B,
base, A, B, ...) so that background load hits every variant alike; the reported numbers are medians
with their min/max spread and a 95% order-statistic interval (`minitron_deploy.stats`). A speedup
is the median of the per-round ratios, with the interval of those ratios: round i of the variant
over the base's rounds i and i + 1 (their geometric mean), the rounds that bracket it in time, so
load that drifts within a round cancels too (one closing round of the base runs after the last; a
variant late in a round of ten ran ~30 s after the base's round i. On 2 cores, float32, 9 shapes x
4 rounds: the pooled sd of log ratios fell from 1.8% to 1.35-1.6%). With `gate` thresholds, rounds
of the base and of the variants whose gated cell cannot decide yet are added (up to
`cfg.gate_max_repeats` ratios per cell) while one cannot (`minitron_deploy.bench.gate`); `prior`
ratios of a cell from an earlier run of the same pairs (a re-measure) are pooled with this run's; a
caller's `futile` rule stops adding rounds for a variant that they could not make pass.

Ideal speedups (documented in the report):
- `ideal_speedup` (compute bound): FLOPs of one base request / FLOPs of one variant request, with
  `LlamaShape.forward_flops_per_token(context)` summed over the ISL prompt tokens and OSL output
  tokens (matmuls, lm_head and attention over the context). Batch does not enter: when compute
  bound, throughput is FLOP/s divided by FLOPs per request.
- `ideal_speedup_memory` (memory bound decode): (variant batch / base batch) x (base weight bytes
  / variant weight bytes), since a decode step reads all weights once for the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minitron_deploy.bench import gate as speed_gate
from minitron_deploy.bench.config import BenchConfig
from minitron_deploy.console import Progress, info
from minitron_deploy.engines.registry import get_engine, spec_of
from minitron_deploy.engines.trtllm import synthetic_rows
from minitron_deploy.errors import InputError, StageError
from minitron_deploy.hardware import gpu, processor, steady_heap
from minitron_deploy.model.io import read_config
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.stats import median_interval

BYTES = {"fp8": 1, "bfloat16": 2, "float16": 2, "bf16": 2, "fp16": 2, "float32": 4, "fp32": 4}


def _shape(model: Any, engine: Any):
    """The model's shape: from its HF config.json, or for a TensorRT-LLM checkpoint from the
    HF folder its engine reads (`hf_dir`), or from the engine's own description."""
    import json

    desc = engine.describe()
    for folder in (model, desc.get("hf_dir")):
        cfg = Path(folder) / "config.json" if isinstance(folder, str | Path) else None
        if cfg is not None and cfg.is_file() and "model_type" in json.loads(cfg.read_text()):
            return LlamaShape.from_config(read_config(folder))
    shape = desc.get("shape")
    return LlamaShape(**shape) if shape else None


def request_flops(shape: Any, isl: int, osl: int) -> float:
    """Forward FLOPs of one request: ISL prompt tokens then OSL generated tokens."""
    prefill = isl * shape.forward_flops_per_token(context=isl / 2)
    decode = osl * shape.forward_flops_per_token(context=isl + osl / 2)
    return prefill + decode


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _prompts(vocab: int, batch: int, isl: int, seed: int) -> list[list[int]]:
    return synthetic_rows(isl, batch, vocab, seed=seed + 1000 * isl)


def _time_one(engine: Any, ids: list[list[int]], osl: int, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    out = engine.generate(ids, osl, ignore_eos=True)
    _sync(device)
    dt = time.perf_counter() - t0
    if len(out) != len(ids) or any(len(o) != osl for o in out):
        lens = sorted({len(o) for o in out})
        raise StageError(f"{engine.name} returned {len(out)} rows of lengths {lens}, not {osl}")
    return dt


def run_matrix(
    models: list[tuple[str, Any]],
    cfg: BenchConfig,
    *,
    progress: bool = True,
    gate: dict[str, float] | None = None,
    prior: dict[str, dict[str, list[float]]] | None = None,
    futile: Callable[[str, list[float]], bool] | None = None,
) -> dict[str, Any]:
    """Benchmark every model on every ISL/OSL pair; the first model is the base.

    Args:
        models: (name, checkpoint folder) pairs; a ready Engine may stand in for the folder
            (random-init benchmarks): it is used as it is (the matrix prepares only the
            engines it builds). The first is the base for speedups. What an engine can do is
            read from its record (`EngineSpec.measures_itself`), never probed.
        cfg: matrix settings.
        progress: show progress per ISL/OSL pair and repeat (a bar, or lines in logs).
        gate: {variant: min speedup}: while a gated cell is inconclusive, run another
            interleaved round of the base and the inconclusive variants, until each such cell
            has `cfg.gate_max_repeats` ratios (its prior ones included).
        prior: {variant: {"ISL/OSL": [per-round speedup ratios]}} measured earlier against the
            same base (paired rounds of another run): pooled with this run's ratios of that
            cell (`speedup_ratios` of a row is what to pass back).
        futile: (variant, a gated cell's ratios so far) -> True when the caller knows the
            gate's remaining rounds could not make that cell pass: the variant gets no more
            added rounds on any pair (its cells stay as measured; listed in `futile`).

    Returns:
        {"results": [row, ...], "engines": {name: describe()}, "config": {...}, "futile":
        [variant, ...], "steady_heap": bool (`hardware.steady_heap` set for CPU runs)} with one
        row per
        (model, pair): model, engine, dtype, weights, isl, osl, batch, req_s, output_tok_s,
        speedup_vs_base (median of per-round ratios), speedup_lo/_hi/_coverage, speedup_ratios
        (every ratio the speedup pools, prior ones first), ideal_speedup,
        ideal_speedup_memory, req_s_min, req_s_max, spread, req_s_lo/_hi, output_tok_s_lo/_hi,
        interval_coverage, repeats, times_s (or tok_s_rounds for external tools).

    Raises:
        InputError: no models, duplicate names, a bad checkpoint or impossible ISL/OSL.
    """
    progress_bar = progress

    if not models:
        raise InputError("no models to benchmark", fix="pass at least one --model")
    names = [n for n, _ in models]
    if len(set(names)) != len(names):
        raise InputError(f"model names must be unique: {names}", where="--model")
    batches = cfg.batches(len(models))
    pairs = cfg.pairs()
    # CPU steps reuse freed pages instead of faulting fresh ones in (`steady_heap`: page faults
    # made per-call times vary by ~5% and slowed each call)
    heap = steady_heap() if cfg.device == "cpu" else False
    engines, owned = {}, []
    try:
        for name, m in models:
            if isinstance(m, str | Path):
                engines[name] = get_engine(
                    cfg.engine, m, dtype=cfg.dtype, device=cfg.device, **cfg.engine_opts
                )
                owned.append(name)
            else:
                engines[name] = m
        # an external tool (trtllm-bench, vLLM's scheduler) times its own runs
        measures_itself = {n: spec_of(e).measures_itself for n, e in engines.items()}
        for (n, _), b in zip(models, batches, strict=True):
            if n in owned and measures_itself[n]:  # e.g. one TensorRT engine for the matrix
                engines[n].prepare(pairs, b)
        shapes = {n: _shape(m, engines[n]) for n, m in models}
        described = {n: e.describe() for n, e in engines.items()}
        rows = []
        doomed: set[str] = set()  # gated variants `futile` gave up on (for every pair)
        runs_per_pair = len(models) * (cfg.warmup + cfg.repeats) + 1  # + the base's closing
        progress = Progress("bench", len(pairs) * runs_per_pair, enabled=progress_bar)
        for isl, osl in pairs:
            info(f"[bench] ISL {isl} / OSL {osl}: {', '.join(names)} at batch {batches}")
            times: dict[str, list[float]] = {n: [] for n in names}
            thr: dict[str, list[dict]] = {n: [] for n in names}
            ids = {}
            for (n, _), b in zip(models, batches, strict=True):
                vocab = shapes[n].vocab_size if shapes[n] else 32000
                ids[n] = _prompts(vocab, b, isl, cfg.seed)
                if not measures_itself[n]:
                    for _ in range(cfg.warmup):
                        _time_one(engines[n], ids[n], osl, cfg.device)
                        progress.update(advance=1, msg=f"{isl}/{osl} warm-up {n}")
                else:
                    progress.update(advance=cfg.warmup)

            rep, pair_rows = 0, []
            bound = cfg.gate_max_repeats  # ratios a gated cell may grow to
            cell = f"{isl}/{osl}"
            before = {n: list((prior or {}).get(n, {}).get(cell, [])) for n in names}
            ran: dict[str, list[int]] = {n: [] for n in names}  # the rounds each model ran
            todo: set[str] = set()

            # a gated cell still inconclusive: another round of the base and of those variants
            while rep < cfg.repeats or (
                gate and (todo := _undecided(pair_rows, gate, before, ran, bound, doomed, futile))
            ):
                extra = rep >= cfg.repeats
                if extra:
                    info(f"[bench] {isl}/{osl}: speedup gate inconclusive, round {rep + 1}")
                for (n, _), b in zip(models, batches, strict=True):
                    if extra and n != names[0] and n not in todo:
                        continue
                    e = engines[n]
                    if measures_itself[n]:  # the tool reports its own numbers
                        thr[n].append(e.throughput(isl, osl, b, cfg.num_requests))
                    else:
                        times[n].append(_time_one(e, ids[n], osl, cfg.device))
                    ran[n].append(rep)
                    progress.update(advance=1, msg=f"{isl}/{osl} repeat {rep + 1} {n}")
                rep += 1
                if rep >= cfg.repeats:
                    pair_rows = _pair_rows(
                        models, batches, engines, described, times, thr, isl, osl, ran, before
                    )
            # the base's closing round: brackets every variant's last round
            n0, b0, closing = names[0], batches[0], None
            if len(names) > 1:
                e0 = engines[n0]
                closing = (
                    e0.throughput(isl, osl, b0, cfg.num_requests)["output_tok_s"]
                    if measures_itself[n0]
                    else b0 * osl / _time_one(e0, ids[n0], osl, cfg.device)
                )
            progress.update(advance=1, msg=f"{isl}/{osl} closing round {n0}")
            pair_rows = _pair_rows(
                models, batches, engines, described, times, thr, isl, osl, ran, before, closing
            )
            rows += pair_rows
        _add_ideals(rows, names[0], shapes, batches, names, described)
        progress.close()
    finally:
        for n in owned:
            engines[n].close()
    return {
        "results": rows,
        "engines": described,
        "config": cfg.model_dump(mode="json"),
        "processor": processor(),
        "gpu": gpu(),
        "steady_heap": heap,
        "futile": sorted(doomed),
    }


def _undecided(rows, gate, before, ran, bound, doomed, futile) -> set[str]:
    """Gated variants whose cell is inconclusive and may still grow (fewer than `bound` ratios,
    prior ones included), unless `futile` says no more rounds could make it pass (such a
    variant joins `doomed`)."""
    unsure = speed_gate.open_cells(rows, gate)
    if futile is not None:
        doomed |= {r["model"] for r in rows if r["model"] in unsure
                   and futile(r["model"], r.get("speedup_ratios") or [])}  # fmt: skip
    return {n for n in unsure - doomed if len(before[n]) + len(ran[n]) < bound}


def _pair_rows(models, batches, engines, described, times, thr, isl, osl, ran, before,
               closing=None):  # fmt: skip
    """One row per model for one ISL/OSL pair, speedups over the first model with intervals
    (`ran`: the rounds each model ran, the base every one; `before`: prior ratios per model;
    `closing`: the base's tokens/s in its closing round, None before it ran, when a variant's
    last round is compared with the base's round alone)."""
    rows, tok_rounds = [], {}
    for (n, _), b in zip(models, batches, strict=True):
        if thr[n]:
            req = [t["req_s"] for t in thr[n]]
            tok = [t["output_tok_s"] for t in thr[n]]
        else:
            req = [b / t for t in times[n]]
            tok = [b * osl / t for t in times[n]]
        tok_rounds[n] = tok
        ri, ti = median_interval(req), median_interval(tok)
        med_req = ri["median"]
        rows.append(
            {
                "model": n,
                "engine": engines[n].name,
                "dtype": described[n].get("dtype"),
                "weights": described[n].get("weights"),
                "isl": isl,
                "osl": osl,
                "batch": b,
                "req_s": med_req,
                "output_tok_s": ti["median"],
                "req_s_min": min(req),
                "req_s_max": max(req),
                "spread": (max(req) - min(req)) / med_req if med_req else None,
                "req_s_lo": ri["lo"],
                "req_s_hi": ri["hi"],
                "output_tok_s_lo": ti["lo"],
                "output_tok_s_hi": ti["hi"],
                "interval_coverage": ri["coverage"],
                "repeats": len(req),
                "times_s": [round(t, 7) for t in times[n]],
                **({"tok_s_rounds": tok} if thr[n] else {}),
            }
        )
    base = models[0][0]
    b_tok = tok_rounds[base]
    if closing is not None:
        rows[0]["closing_tok_s"] = closing
    # the base around round k: its rounds k and k + 1 (the closing one after the last)
    after = [*b_tok[1:], closing or (b_tok[-1] if b_tok else None)]
    around = [(a * z) ** 0.5 if a and z else None for a, z in zip(b_tok, after, strict=True)]
    for r in rows:
        n = r["model"]
        if not b_tok or not all(around):
            r.update(speedup_vs_base=None, speedup_lo=None, speedup_hi=None)
            r["speedup_coverage"] = None
            continue
        mine = zip(tok_rounds[n], ran[n], strict=True)
        own = n == base
        ratios = [1.0] * len(b_tok) if own else before[n] + [t / around[k] for t, k in mine]
        sp = median_interval(ratios)
        r.update(speedup_vs_base=sp["median"], speedup_lo=sp["lo"], speedup_hi=sp["hi"])
        r["speedup_coverage"] = sp["coverage"]
        r["speedup_ratios"] = [round(x, 6) for x in ratios]
    return rows


def add_unpaired_speedups(rows, base, shapes, batches, names, described) -> None:
    """Speedups of rows measured in separate runs (not interleaved, e.g. one model at a time
    for memory): the ratio of medians, with no interval (rounds cannot be paired), then ideals."""
    for r in rows:
        b = next(
            x for x in rows if x["model"] == base and (x["isl"], x["osl"]) == (r["isl"], r["osl"])
        )
        r["speedup_vs_base"] = r["output_tok_s"] / b["output_tok_s"] if b["output_tok_s"] else None
        r["speedup_lo"] = r["speedup_hi"] = r["speedup_coverage"] = None
    _add_ideals(rows, base, shapes, batches, names, described)


def _add_ideals(rows, base, shapes, batches, names, described) -> None:
    batch_of = dict(zip(names, batches, strict=True))
    for r in rows:
        sv, sb = shapes.get(r["model"]), shapes.get(base)
        if sv is None or sb is None:
            r["ideal_speedup"] = r["ideal_speedup_memory"] = None
            continue
        r["ideal_speedup"] = request_flops(sb, r["isl"], r["osl"]) / request_flops(
            sv, r["isl"], r["osl"]
        )
        bytes_v = weight_bytes(sv, described[r["model"]].get("weights"))
        bytes_b = weight_bytes(sb, described[base].get("weights"))
        r["ideal_speedup_memory"] = (batch_of[r["model"]] / batch_of[base]) * bytes_b / bytes_v


def weight_bytes(shape: Any, weights: str | None) -> float:
    """Bytes of weights read per decode step; FP8 keeps embeddings and lm_head in BF16."""
    per = BYTES.get(str(weights), 2)
    emb = shape.num_parameters - shape.non_embedding_parameters
    return shape.non_embedding_parameters * per + emb * max(per, 2)
