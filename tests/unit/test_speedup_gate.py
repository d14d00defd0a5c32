"""The speedup gate's three outcomes on synthetic timings, and its added rounds.

The engines here are stand-ins (named so): they report synthetic throughputs through the
`throughput` hook that external tools (trtllm-bench) use, so the matrix, its intervals, the
pipeline's gate and the CI script's exit codes run on timings we choose.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest

from minitron_deploy.bench import BenchConfig, run_matrix
from minitron_deploy.bench import gate as speed_gate
from minitron_deploy.pipeline.stages.bench import speedup_gate

CI_GATE = Path(__file__).resolve().parents[2] / "examples" / "ci" / "speedup_gate.py"


class StandInThroughputEngine:
    """Stand-in for an external benchmark tool: round i reports rate x noise_i tokens/s."""

    name = "stand-in"

    def __init__(self, rate: float, noise: float, seed: int):
        self.rate, self.noise = rate, noise
        self.rng = random.Random(seed)
        self.calls = 0

    def generate(self, ids, max_new_tokens, ignore_eos=False):
        raise AssertionError("the matrix must use throughput() of an external tool")

    def describe(self) -> dict:
        return {"dtype": "float32", "weights": "float32"}

    def throughput(self, isl: int, osl: int, batch: int, num_requests) -> dict:
        self.calls += 1
        tok = self.rate * (1 + self.rng.uniform(-self.noise, self.noise))
        return {"req_s": tok / osl, "output_tok_s": tok}

    def close(self) -> None:
        pass


def _bench(ratio: float, noise: float, repeats: int, gate=None, max_repeats: int = 9):
    base = StandInThroughputEngine(100.0, noise, seed=1)
    var = StandInThroughputEngine(100.0 * ratio, noise, seed=2)
    cfg = BenchConfig(isl_osl="8/4", batch=(4, 4), repeats=repeats, gate_max_repeats=max_repeats)
    res = run_matrix([("base", base), ("v", var)], cfg, progress=False, gate=gate)
    return res, var


def test_pass_fail_inconclusive_on_synthetic_timings():
    res, _ = _bench(2.0, 0.02, 6)
    assert speed_gate.evaluate(res["results"], {"v": 1.8})["outcome"] == "pass"
    assert speed_gate.evaluate(res["results"], {"v": 2.3})["outcome"] == "fail"
    row = next(r for r in res["results"] if r["model"] == "v")
    assert row["speedup_lo"] <= row["speedup_vs_base"] <= row["speedup_hi"]
    # the threshold inside the interval: neither pass nor fail
    mid = (row["speedup_lo"] + row["speedup_hi"]) / 2
    assert row["speedup_lo"] < mid < row["speedup_hi"]
    out = speed_gate.evaluate(res["results"], {"v": mid})
    assert out["outcome"] == "inconclusive" and out["inconclusive"] and not out["failures"]


def test_too_few_repeats_are_inconclusive_without_added_rounds():
    res, _ = _bench(2.0, 0.01, 3)  # [min, max] of 3 rounds covers 75%, not 95%
    row = next(r for r in res["results"] if r["model"] == "v")
    assert row["speedup_coverage"] == pytest.approx(0.75)
    assert speed_gate.evaluate(res["results"], {"v": 1.5})["outcome"] == "inconclusive"


def test_gate_adds_rounds_until_decided_and_stops_at_the_bound():
    res, var = _bench(2.0, 0.01, 3, gate={"v": 1.5})
    row = next(r for r in res["results"] if r["model"] == "v")
    assert row["repeats"] == 6 and var.calls == 6  # the fewest rounds with a 95% interval
    assert speed_gate.evaluate(res["results"], {"v": 1.5})["outcome"] == "pass"
    # noisy and right at the threshold: rounds are added up to the bound, then it gives up
    res, var = _bench(1.0, 0.3, 3, gate={"v": 1.0}, max_repeats=8)
    row = next(r for r in res["results"] if r["model"] == "v")
    assert row["repeats"] == 8 and var.calls == 8
    assert speed_gate.evaluate(res["results"], {"v": 1.0})["outcome"] == "inconclusive"


def test_added_rounds_run_the_base_and_the_undecided_variants_only():
    base = StandInThroughputEngine(100.0, 0.01, seed=1)
    clear = StandInThroughputEngine(300.0, 0.01, seed=2)  # 3x: decided at 6 rounds
    near = StandInThroughputEngine(100.0, 0.3, seed=3)  # 1.0x, noisy: never decided
    other = StandInThroughputEngine(200.0, 0.01, seed=4)  # not gated
    cfg = BenchConfig(isl_osl="8/4", batch=(4, 4, 4, 4), repeats=3, gate_max_repeats=9)
    models = [("base", base), ("clear", clear), ("near", near), ("other", other)]
    res = run_matrix(models, cfg, progress=False, gate={"clear": 1.5, "near": 1.0})
    rows = {r["model"]: r for r in res["results"]}
    assert base.calls == 9 + 1 and near.calls == 9 and rows["near"]["repeats"] == 9  # + closing
    assert clear.calls == 6 and rows["clear"]["repeats"] == 6  # stopped once decided
    assert other.calls == 3 and rows["other"]["repeats"] == 3  # ungated: no added rounds
    # each ratio is paired with the base's own round, also for variants that skipped rounds
    assert len(rows["clear"]["speedup_ratios"]) == 6
    assert rows["clear"]["speedup_vs_base"] == pytest.approx(3.0, rel=0.03)


def test_prior_ratios_are_pooled_and_count_toward_the_bound():
    base = StandInThroughputEngine(100.0, 0.01, seed=1)
    var = StandInThroughputEngine(200.0, 0.01, seed=2)
    cfg = BenchConfig(isl_osl="8/4", batch=(4, 4), repeats=3, gate_max_repeats=9)
    prior = {"v": {"8/4": [2.0, 2.01, 1.99]}}  # 3 rounds of an earlier run
    res = run_matrix([("base", base), ("v", var)], cfg, progress=False, gate={"v": 1.5},
                     prior=prior)  # fmt: skip
    row = next(r for r in res["results"] if r["model"] == "v")
    # 3 prior + 3 new ratios reach the 95% interval: no added round
    assert var.calls == 3 and row["speedup_ratios"][:3] == [2.0, 2.01, 1.99]
    assert len(row["speedup_ratios"]) == 6 and row["speedup_coverage"] >= 0.95
    assert speed_gate.evaluate(res["results"], {"v": 1.5})["outcome"] == "pass"
    # undecided: new rounds stop when prior + new reach the bound
    near = StandInThroughputEngine(100.0, 0.3, seed=3)
    base = StandInThroughputEngine(100.0, 0.01, seed=1)
    res = run_matrix([("base", base), ("v", near)], cfg, progress=False, gate={"v": 1.0},
                     prior={"v": {"8/4": [0.9, 1.1, 1.0, 0.95]}})  # fmt: skip
    assert near.calls == 5 and len(res["results"][1]["speedup_ratios"]) == 9


def test_a_variant_the_caller_calls_futile_gets_no_more_rounds_on_any_pair():
    base = StandInThroughputEngine(100.0, 0.01, seed=1)
    near = StandInThroughputEngine(100.0, 0.3, seed=3)  # 1.0x, noisy: never decided
    other = StandInThroughputEngine(100.0, 0.3, seed=4)  # the same, not given up on
    cfg = BenchConfig(isl_osl="8/4,8/8", batch=(4, 4, 4), repeats=3, gate_max_repeats=9)
    asked = []

    def futile(name, ratios):
        asked.append((name, len(ratios)))
        return name == "near" and len(ratios) >= 4

    models = [("base", base), ("near", near), ("other", other)]
    res = run_matrix(models, cfg, progress=False, gate={"near": 1.0, "other": 1.0}, futile=futile)
    rows = {(r["model"], r["osl"]): r for r in res["results"]}
    # first pair: 3 rounds and one added, then given up; second pair: the 3 rounds only
    assert rows[("near", 4)]["repeats"] == 4 and rows[("near", 8)]["repeats"] == 3
    assert near.calls == 7 and res["futile"] == ["near"]
    # the other variant still gets its added rounds (the base runs every round)
    assert rows[("other", 4)]["repeats"] > 4 and base.calls == other.calls + 2 > near.calls + 2
    assert ("near", 3) in asked and all(n == "other" for n, k in asked if k > 4)
    # the gate's verdict on a futile cell is what its rounds say: inconclusive, not a pass
    assert speed_gate.evaluate(res["results"], {"near": 1.0})["outcome"] == "inconclusive"
    # without the rule (the pipeline's gate) nothing changes
    assert run_matrix(models, cfg, progress=False, gate={"near": 1.0})["futile"] == []


def test_ci_script_and_pipeline_share_the_decision(tmp_path):
    spec = importlib.util.spec_from_file_location("speedup_gate", CI_GATE)
    ci = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ci)
    res, _ = _bench(2.0, 0.02, 6)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(res))
    row = next(r for r in res["results"] if r["model"] == "v")
    mid = (row["speedup_lo"] + row["speedup_hi"]) / 2

    class Node:
        meta: dict = {}

    for limit, code in ((1.8, 0), (2.3, 1), (mid, 3)):
        assert ci.main([str(path), "--min", f"v={limit}"]) == code
        Node.meta = {"min_speedup": {"v": limit}}
        msgs = speedup_gate(Node(), res)
        assert bool(msgs) == (code != 0)
        unsure = [m for m in msgs if m.startswith(speed_gate.INCONCLUSIVE_PREFIX)]
        assert len(unsure) == (1 if code == 3 else 0)


class StandInDriftingEngine(StandInThroughputEngine):
    """Stand-in for an external tool on a host whose speed drifts: every call of any engine
    advances one shared clock, and throughput is rate x exp(drift x tick)."""

    def __init__(self, rate: float, clock: list[int], drift: float):
        super().__init__(rate, 0.0, seed=0)
        self.clock, self.drift = clock, drift

    def throughput(self, isl, osl, batch, num_requests) -> dict:
        self.calls += 1
        self.clock[0] += 1
        tok = self.rate * math.exp(self.drift * self.clock[0])
        return {"req_s": tok / osl, "output_tok_s": tok}


def test_each_round_is_compared_with_the_base_rounds_around_it():
    """Load that drifts during a round: a variant run after the base's round is compared with
    the base's rounds before and after it (a closing base round after the last), so the drift
    cancels; compared with the base's round alone, every ratio would be off by exp(drift)."""
    clock = [0]
    base = StandInDriftingEngine(100.0, clock, 0.02)
    var = StandInDriftingEngine(200.0, clock, 0.02)
    cfg = BenchConfig(isl_osl="8/4", batch=(4, 4), repeats=4)
    res = run_matrix([("base", base), ("v", var)], cfg, progress=False)
    rows = {r["model"]: r for r in res["results"]}
    assert base.calls == 4 + 1 and var.calls == 4  # the closing round
    assert rows["v"]["speedup_ratios"] == pytest.approx([2.0] * 4, rel=1e-6)
    assert rows["base"]["speedup_vs_base"] == 1.0
    assert rows["base"]["repeats"] == 4  # the closing round only brackets
