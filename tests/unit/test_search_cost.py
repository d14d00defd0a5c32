"""The search's cost model, families, seed shapes, lower-bound budget check, re-rank selection
and rank agreement, on synthetic timings with a known structure (no engine, no torch)."""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import pytest

from minitron_deploy.model.shapes import KNOWN_SHAPES, LlamaShape
from minitron_deploy.search.candidates import Candidate
from minitron_deploy.search.cost import (
    FEATURES,
    CostModel,
    features,
    leave_one_out,
    nnls,
    relative_errors,
)
from minitron_deploy.search.rank import (
    combined_loss,
    family,
    kendall_tau,
    rerank_selection,
    seed_targets,
)

SMOL = LlamaShape.from_config(KNOWN_SHAPES["smollm2-135m"])


def _grid() -> list[Candidate]:
    out = []
    for h, f, q, n in itertools.product(
        (576, 480, 384, 288), (1536, 1280, 1024, 768), (9, 6), (30, 24, 20, 15)
    ):
        if h % q == 0 and (h, f, q, n) != (576, 1536, 9, 30):
            out.append(Candidate(h, f, q, 3, n))
    return out


# a synthetic engine: per pair, time = sum of known costs per term (a per-layer overhead that
# makes depth pay more than its FLOPs), relative to the source's time at half the batch
TRUE = {
    "32/32": [2e-9, 1.5e-9, 4e-6, 3e-10, 2e-2, 0.05],
    "64/16": [3e-9, 2.5e-9, 9e-6, 1e-10, 1e-2, 0.02],
}


def _measured(c: Candidate, noise: float = 0.0, rng=None) -> dict[str, float]:
    out = {}
    for p, coef in TRUE.items():
        t_src = sum(a * b for a, b in zip(coef, features(SMOL), strict=True))
        t = sum(a * b for a, b in zip(coef, features(c.shape(SMOL)), strict=True))
        if rng is not None:
            t *= 1 + rng.uniform(-noise, noise)
        out[p] = 2.0 * t_src / t  # batch 64 over 32
    return out


def test_nnls_recovers_non_negative_coefficients_and_clips_negative_ones():
    rng = random.Random(0)
    x = [[rng.uniform(0.1, 2) for _ in range(4)] for _ in range(12)]
    true = [0.5, 0.0, 2.0, 1.0]
    y = [sum(a * b for a, b in zip(true, r, strict=True)) for r in x]
    assert nnls(x, y) == pytest.approx(true, abs=1e-9)
    # a target that wants a negative coefficient gets zero there, never below
    y2 = [v - 3 * r[1] for v, r in zip(y, x, strict=True)]
    c = nnls(x, y2)
    assert min(c) >= 0 and c[1] == 0


def test_cost_model_fits_a_known_structure_and_predicts_unfitted_shapes():
    cands = _grid()
    rng = random.Random(1)
    fit_on = rng.sample(cands, 10)
    points = [(c.shape(SMOL), _measured(c)) for c in fit_on]
    model = CostModel.fit(points, batch_ratio=2.0)
    held = [c for c in cands if c not in fit_on]
    pred = [model.speedup(c.shape(SMOL)) for c in held]
    meas = [min(_measured(c).values()) for c in held]
    err = relative_errors(pred, meas)
    assert err["n"] == len(held) and err["max"] < 1e-6  # exact structure: exact predictions
    assert set(model.coef) == set(TRUE) and len(model.coef["32/32"]) == len(FEATURES)


def test_one_exponent_of_the_ideal_speedup_cannot_do_what_the_terms_do():
    """Depth-only and width-only shapes of the same FLOPs differ in speed (per-layer overhead):
    the per-term model tells them apart within noise, validated leave-one-out."""
    rng = random.Random(2)
    cands = _grid()
    fit_on = rng.sample(cands, 12)
    points = [(c.shape(SMOL), _measured(c, 0.02, rng)) for c in fit_on]
    loo = leave_one_out(points, 2.0)
    err = relative_errors(loo, [min(sp.values()) for _, sp in points])
    assert err["n"] == 12 and err["max"] < 0.08  # 2% timing noise, 6 terms from 11 points
    depth = Candidate(576, 1536, 9, 3, 15)
    width = Candidate(384, 1024, 6, 3, 30)
    d, w = min(_measured(depth).values()), min(_measured(width).values())
    model = CostModel.fit(points, 2.0)
    assert d > w  # the known structure: fewer layers pay more than fewer channels here
    assert model.speedup(depth.shape(SMOL)) > model.speedup(width.shape(SMOL))


def test_families_and_seed_shapes():
    assert family(Candidate(576, 1536, 9, 3, 15), SMOL) == "depth"
    assert family(Candidate(384, 1024, 6, 3, 30), SMOL) == "width"
    assert family(Candidate(576, 1024, 9, 3, 30), SMOL) == "width"
    assert family(Candidate(384, 1536, 9, 3, 20), SMOL) == "mixed"
    depth, width = seed_targets(SMOL)
    # Minitron's two students: half the layers; width to 3/4 hidden, 9/14 FFN, heads kept
    # (576 is not cut on multiples of 64 x 9 heads: 432 = 9 heads x 48 = 27 x 16)
    assert Candidate(**depth) == Candidate(576, 1536, 9, 3, 15)
    assert Candidate(**width) == Candidate(432, 1024, 9, 3, 30)
    llama8b = SMOL.__class__(**{**SMOL.__dict__, "hidden_size": 4096, "intermediate_size": 14336,
                                "num_attention_heads": 32, "num_key_value_heads": 8,
                                "num_hidden_layers": 32})  # fmt: skip
    # Llama-3.1-Minitron-4B-Width's published cut, and its depth sibling's 16 layers
    assert Candidate(**seed_targets(llama8b)[1]) == Candidate(3072, 9216, 32, 8, 32)
    assert seed_targets(llama8b)[0]["num_layers"] == 16
    for heads in (12, 16, 18, 64):
        src = SMOL.__class__(**{**SMOL.__dict__, "num_attention_heads": heads,
                                "num_key_value_heads": 1})  # fmt: skip
        for t in seed_targets(src):
            assert t["hidden_size"] % t["num_attention_heads"] == 0
            assert t["num_attention_heads"] % t["num_key_value_heads"] == 0
            assert t["hidden_size"] <= src.hidden_size
        assert seed_targets(src)[1]["hidden_size"] < src.hidden_size


def test_rerank_takes_the_best_of_each_family_and_the_seeds():
    ranked = ["w1", "w2", "w3", "m1", "w4", "m2", "d1", "m3", "d2"]
    fam = {i: {"w": "width", "m": "mixed", "d": "depth"}[i[0]] for i in ranked}
    # one zero-shot list would take w1, w2, w3; per family: the best 2 of each
    assert rerank_selection(ranked, fam, 2) == ["d1", "d2", "w1", "w2", "m1", "m2"]
    assert rerank_selection(ranked, fam, 1, always=["w4", "d1"]) == ["d1", "w1", "m1", "w4"]


def test_combined_score_and_kendall_tau():
    assert combined_loss(4.0, {"manpages": 5.0}) == 4.5
    assert combined_loss(4.0, {}) == 4.0
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    a, b = [3.1, 1.2, 2.2, 5.0, 4.4, 0.3], [2.0, 1.0, 3.0, 6.0, 5.0, 0.5]
    assert kendall_tau(a, b) == pytest.approx(
        13 / 15
    )  # 14 concordant pairs, 1 discordant (items 0, 2)
    scipy_stats = pytest.importorskip("scipy.stats")  # an independent implementation
    ties = [1.0, 1.0, 2.0, 3.0, 3.0]
    other = [2.0, 1.0, 2.0, 3.0, 4.0]
    assert kendall_tau(ties, other) == pytest.approx(scipy_stats.kendalltau(ties, other)[0])


def _search(ms: float):
    """A Search with rows only (no checkpoint): the budget checks read rows and the band."""
    from minitron_deploy.search.config import SearchConfig
    from minitron_deploy.search.run import Search

    s = Search.__new__(Search)
    s.cfg = SearchConfig(budget={"min_speedup": ms})
    s.band, s.seed_ids, s.fit = 0.05, [], None
    return s


def _row(**kw):
    return {"rejected": None, "measured": True, "speedup": None, "speedup_lo": None,
            "speedup_hi": None, "speedup_coverage": 0.97, **kw}  # fmt: skip


def test_budget_is_checked_on_the_measured_lower_bound():
    s = _search(1.8)
    # median over the budget but the interval's lower bound under it: not confirmed
    straddle = _row(speedup=1.9, speedup_lo=1.7, speedup_hi=2.0)
    assert not s.confirmed(straddle) and s.plausible(straddle)
    assert s.confirmed(_row(speedup=1.9, speedup_lo=1.81, speedup_hi=2.0))
    # the range of 3 rounds (75% coverage) is no 95% interval: not confirmed, however clear
    assert not s.confirmed(_row(speedup=2.5, speedup_lo=2.4, speedup_hi=2.6, speedup_coverage=0.75))
    # measured again with the gate and still under: dropped
    assert not s.plausible({**straddle, "gated": True})
    assert not s.plausible(_row(speedup=1.7, speedup_lo=1.6, speedup_hi=1.75))
    # predicted: kept only when clear of the budget by the model's error (else measured first)
    assert s.plausible(_row(measured=False, speedup=1.8 / 0.95 + 1e-9))
    assert not s.plausible(_row(measured=False, speedup=1.85))
    assert not s.confirmed(_row(measured=False, speedup=3.0))  # a prediction never confirms
    assert not s.plausible(_row(speedup=2.5, speedup_lo=2.4, speedup_hi=2.6, rejected="max_params"))


def test_ranked_shapes_are_measured_when_the_walk_reaches_them():
    """Each family's ranked shapes are walked in zero-shot order and measured (with the gate)
    when reached, before they are kept or dropped; one that falls under gives its place to
    the next; shapes below a confirmed one of their family are never measured (counted when
    near the budget); a family whose ranked shapes all fall under gets its next largest ranked."""
    from minitron_deploy.search.run import _finalists

    s = _search(1.8)
    s.fit, s.seed_ids, s.log = {}, [], lambda *a: None
    s.cfg = s.cfg.model_copy(update={"top_k": 1})
    # predicted speedups and zero-shot losses; "true" speedups the stand-in measurement returns
    pred = {"a": 1.82, "b": 1.88, "c": 1.78, "d": 1.85, "e": 2.5, "w1": 1.81, "w2": 1.9, "w3": 2.2}
    zs = {"a": 5.0, "c": 5.1, "b": 5.2, "d": 5.3, "e": 5.4, "w1": 6.0, "w2": 6.1, "w3": 7.0}
    true = {"a": 1.6, "b": 2.0, "c": 1.7, "d": 1.95, "e": 2.6, "w1": 1.5, "w2": 1.6, "w3": 2.3}
    s.rows = {
        i: _row(
            id=i,
            measured=False,
            speedup=p,
            params=100 - n,
            zero_shot_loss=zs[i],
            family="width" if i.startswith("w") else "mixed",
        )  # fmt: skip
        for n, (i, p) in enumerate(pred.items())
    }
    s.rows["w3"]["zero_shot_loss"] = None  # not ranked yet: the smallest width shape
    batches, ranked_later = [], []

    def measure(ids, finalists=False, fresh=frozenset()):  # stand-in for the engine's run
        assert finalists
        batches.append(sorted(ids))
        for i in ids:
            t = true[i]
            s.rows[i].update(measured=True, speedup=t, speedup_lo=t - 0.02, speedup_hi=t + 0.02,
                             gated=True, speedup_coverage=0.97)  # fmt: skip

    def rank(ids):  # stand-in for the zero-shot loss
        ranked_later.extend(ids)
        for i in ids:
            s.rows[i]["zero_shot_loss"] = zs[i]

    s.measure, s.refit = measure, lambda: None
    top = _finalists(s, ["a", "b", "c", "d", "e", "w1", "w2"], list(pred), rank)
    # mixed: a (best zero-shot) and c fall under, b is confirmed; width: w1 and w2 fall under,
    # then w3 (never ranked before) is ranked and confirmed
    assert top == ["w3", "b"]
    assert batches == [["a", "w1"], ["c", "w2"], ["b", "w3"]] and ranked_later == ["w3"]
    # d (near the budget) and e (predicted clear of it) rank below b: never measured
    assert not s.rows["d"]["measured"] and not s.rows["e"]["measured"]
    assert s.in_band() == 1  # d is counted


def test_error_beyond_the_measured_interval_and_the_band_it_sets():
    """The band is the model's leave-one-out error beyond each shape's measured interval: a
    prediction inside a noisy interval is no model error; one outside counts by its distance."""
    from minitron_deploy.search.cost import beyond_interval

    e = beyond_interval([2.0, 1.5, 3.3], [1.8, 1.6, 2.5], [2.2, 1.9, 3.0])
    # inside: 0; 1.5 under [1.6, 1.9]: 1 - 1.5 / 1.6; 3.3 over [2.5, 3.0]: 3.3 / 3.0 - 1
    assert e["n"] == 3 and e["median"] == pytest.approx(1 - 1.5 / 1.6)
    assert e["max"] == pytest.approx(0.1)
    # relative to the nearer end as the plain error is to the median: never more than it for a
    # median inside the interval (the search test once saw 0.00752 > 0.00748 the other way)
    p, lo, med = 1.0, 1.0075, 1.00752
    assert beyond_interval([p], [lo], [1.1])["max"] <= abs(p / med - 1)
    assert beyond_interval([1.0], [None], [None])["n"] == 0
    # fit_cost_model sets the band from it (at least MIN_BAND), not from the distance to medians
    from minitron_deploy.search.run import MIN_BAND, Search

    rng = random.Random(5)
    cands = _grid()[:10]
    s = Search.__new__(Search)
    s.cfg = SimpleNamespace(speed=((32, 64), None, 9))
    s.source = SMOL
    s.cands = {c.id: c for c in cands}
    s.rows, s.fit = {}, None
    for c in cands:
        sp = _measured(c, 0.10, rng)  # 10% noise on the medians, intervals that cover it
        s.rows[c.id] = {"id": c.id, "measured": True, "pair_speedups": sp,
                        "speedup": min(sp.values()), "speedup_lo": min(sp.values()) * 0.7,
                        "speedup_hi": min(sp.values()) * 1.3}  # fmt: skip
    s.fit_cost_model(list(s.rows))
    assert s.fit["leave_one_out"]["max"] > 0.05  # the medians are noisy ...
    assert s.band == MIN_BAND  # ... but every prediction lies inside its measured interval
    assert s.fit["leave_one_out_beyond_interval"]["max"] == 0.0


def test_refit_on_every_measured_shape_keeps_each_prediction_made_before_measuring():
    """After a batch of measurements the model is refitted on every measured shape; a shape
    measured after the calibration fit is validated against the prediction it had before it
    was measured, never against the refit that includes it."""
    from minitron_deploy.search.run import Search

    rng = random.Random(7)
    cands = _grid()[:12]
    s = Search.__new__(Search)
    s.cfg = SimpleNamespace(speed=((32, 64), None, 9))
    s.source, s.cands, s.rows, s.fit = SMOL, {c.id: c for c in cands}, {}, None
    truth = {c.id: _measured(c, 0.04, rng) for c in cands}

    def measure(i):
        sp = truth[i]
        m = min(sp.values())
        s.rows[i].update(measured=True, pair_speedups=sp, speedup=m, speedup_lo=m * 0.97,
                         speedup_hi=m * 1.03)  # fmt: skip

    for c in cands:
        s.rows[c.id] = {"id": c.id, "measured": False, "speedup": None, "predicted_speedup": None}
    calib = [c.id for c in cands[:7]]
    for i in calib:
        measure(i)
    s.fit_cost_model(calib)
    later = cands[7].id
    before = s.rows[later]["predicted_speedup"]
    measure(later)
    s.refit()
    assert s.fit["calibration"] == calib and s.fit["fits"] == 2
    assert s.fit["shapes"] == 8 and later in s.fit["fitted_on"]
    assert s.rows[later]["predicted_speedup"] == before  # the prediction made before measuring
    val = s.validation_errors()
    assert val["ids"] == [later]
    assert val["median"] == pytest.approx(abs(before / s.rows[later]["speedup"] - 1))
    # the unmeasured shapes are predicted by the refit
    rest = cands[8]
    assert s.rows[rest.id]["predicted_speedup"] == s.cost_model.speedup(rest.shape(SMOL))
    assert s.rows[rest.id]["speedup"] == s.rows[rest.id]["predicted_speedup"]


def test_a_shape_the_gate_could_not_confirm_on_this_host_is_not_measured_again():
    """With this search's round-to-round spread, a measured median just over the budget cannot
    get a 95% lower bound over it within gate_max_repeats rounds: the finalists pass it over
    (settled, no longer plausible) instead of spending the rounds."""
    s = _search(1.8)
    s.bench = SimpleNamespace(gate_max_repeats=9)
    rng = random.Random(3)

    def ratios(med):  # 3 rounds with ~8% spread around `med`, per pair
        return {p: [med * math.exp(rng.gauss(0, 0.08)) for _ in range(3)] for p in ("a", "b")}

    s.rows = {f"r{j}": _row(pair_ratios=ratios(2.0)) for j in range(6)}  # the host's spread
    sigma = s.round_spread()
    assert 0.04 < sigma < 0.13
    near = _row(speedup=1.65, speedup_lo=1.5, speedup_hi=1.8, speedup_coverage=0.75,
                pair_ratios=ratios(1.65))  # fmt: skip
    clear = _row(speedup=2.3, speedup_lo=2.1, speedup_hi=2.5, speedup_coverage=0.75,
                 pair_ratios=ratios(2.3))  # fmt: skip
    assert not s.confirmable(near) and s.confirmable(clear)
    s.rows.update(near=near, clear=clear)
    near["unconfirmable"] = True
    assert s.settled("near") and not s.plausible(near)
    assert not s.settled("clear") and s.plausible(clear)  # measured again with the gate
    # no spread known yet (nothing measured twice): every shape may still be confirmed
    s.rows = {"near": near}
    near["pair_ratios"] = {"a": [1.75]}
    assert s.round_spread() is None and s.confirmable(near)


def test_the_gate_stops_rounds_for_a_finalist_that_cannot_be_confirmed():
    """The search hands the matrix its rule (`could_confirm`): a finalist whose median stays
    under what 9 rounds could confirm gets no more gate rounds and is marked unconfirmable; a
    low start within two standard errors of a confirmable median is not dropped."""
    s = _search(1.8)
    s.bench = SimpleNamespace(gate_max_repeats=9)
    rng = random.Random(4)
    s.rows = {f"r{j}": _row(pair_ratios={p: [2.0 * math.exp(rng.gauss(0, 0.08)) for _ in range(3)]
                                         for p in ("a", "b")}) for j in range(8)}  # fmt: skip
    sigma = s.round_spread()
    # the rule per cell: 1.6x cannot be confirmed at any count of rounds, 2.2x always can
    assert not s.could_confirm({"a": [1.6] * 3}) and s.could_confirm({"a": [2.2] * 3})
    assert not s.could_confirm({"a": [2.2] * 3, "b": [1.6] * 3})  # every cell must
    # the slack shrinks with the rounds: a median that may still be low by noise at 3 rounds
    # is kept, at 8 rounds it is not
    edge = 1.8 * math.exp(-(-0.93 * sigma) - 1.5 * 1.2533 * sigma / math.sqrt(3))
    assert s.could_confirm({"a": [edge] * 3}) and not s.could_confirm({"a": [edge] * 8})


def test_a_seed_under_the_budget_in_an_ungated_run_is_measured_again_in_its_own():
    """A seed shape measured only among the calibration shapes (no gate) a little under the
    budget is not passed over on those rounds: the finalists measure it again with the gate,
    its earlier rounds not pooled; a grid shape with the same rounds is passed over, and a seed
    far under the budget is not measured again."""
    from minitron_deploy.search.run import _finalists

    s = _search(1.8)
    s.bench = SimpleNamespace(gate_max_repeats=9)
    s.cfg = s.cfg.model_copy(update={"top_k": 1})
    s.log = lambda *a: None
    rng = random.Random(4)
    s.rows = {f"r{j}": _row(id=f"r{j}", family="width", zero_shot_loss=9.0, rejected="max_params",
                            pair_ratios={p: [2.0 * math.exp(rng.gauss(0, 0.08)) for _ in range(3)]
                                         for p in ("a", "b")}) for j in range(8)}  # fmt: skip
    low = {"a": [2.08, 2.00, 2.03], "b": [1.83, 1.72, 1.71]}  # the calibration run's rounds

    def measured_low(i, fam, zs):
        return _row(id=i, family=fam, zero_shot_loss=zs, speedup=1.72, speedup_lo=1.71,
                    speedup_hi=1.83, speedup_coverage=0.75, pair_ratios=dict(low))  # fmt: skip

    s.rows.update(
        seed=measured_low("seed", "depth", 7.4),
        grid=measured_low("grid", "mixed", 7.0),
        far=_row(id="far", family="width", zero_shot_loss=8.0, speedup=1.40, speedup_lo=1.35,
                 speedup_hi=1.45, speedup_coverage=0.75, pair_ratios={"a": [1.4] * 3}),
    )  # fmt: skip
    s.seed_ids = ["seed", "far"]
    assert s.recheck(s.rows["seed"]) and s.plausible(s.rows["seed"])
    assert not s.recheck(s.rows["grid"]) and not s.recheck(s.rows["far"])
    assert not s.confirmable(s.rows["seed"])  # its own rounds alone would drop it
    calls = []

    def measure(ids, finalists=False, fresh=frozenset()):  # stand-in for the engine's run
        calls.append((sorted(ids), finalists, sorted(fresh)))
        for i in ids:
            assert i in fresh  # (the grid shape and the far seed are not measured again)
            r = [1.95, 1.97, 1.93, 1.99, 1.96, 1.94]  # its own run: no earlier rounds pooled
            s.rows[i].update(speedup=1.95, speedup_lo=1.93, speedup_hi=1.99, gated=True,
                             speedup_coverage=0.97, pair_ratios={"a": r, "b": r})  # fmt: skip

    s.measure = measure
    top = _finalists(s, ["grid", "seed", "far"])
    assert calls == [(["seed"], True, ["seed"])]
    assert top == ["seed"] and s.confirmed(s.rows["seed"]) and not s.recheck(s.rows["seed"])
    assert s.rows["grid"].get("unconfirmable") and not s.plausible(s.rows["grid"])


def test_a_fresh_measurement_does_not_pool_the_earlier_rounds(monkeypatch):
    """`measure(..., fresh=...)` hands the matrix no earlier rounds for those shapes (it pools
    them for the others) and marks them rechecked. The matrix run is a stand-in here."""
    import minitron_deploy.search.run as run_mod

    s = _search(1.8)
    from minitron_deploy.bench.config import BenchConfig

    s.bench = BenchConfig(engine="torch", isl_osl="32/32")
    s.cfg = SimpleNamespace(speed=((32, 64), None, 9), budget=s.cfg.budget)
    s.cands, s.teacher_dir, s.log = {"a": None, "b": None}, "teacher", lambda *a: None
    s.seconds, s.counts, s.progress = {}, {}, False
    earlier = {"32/32": [1.7, 1.7, 1.7]}
    s.rows = {i: _row(id=i, pair_ratios=dict(earlier)) for i in ("a", "b")}
    s.rows["a"]["unconfirmable"] = True  # an earlier gated run gave up on it

    class Closed:
        def close(self):
            pass

    monkeypatch.setattr(s, "_speed_model", lambda c: Closed(), raising=False)
    seen = {}

    def matrix(models, bench, progress, gate, prior, futile):  # stand-in for the bench
        seen.update(prior=prior, gate=gate)
        rows = []
        for name, _ in models[1:]:
            r = [*prior.get(name, {}).get("32/32", []), 1.95, 1.96, 1.97]
            med = sorted(r)[len(r) // 2]
            rows.append({"model": name, "isl": 32, "osl": 32, "speedup_vs_base": med,
                         "speedup_lo": min(r), "speedup_hi": max(r), "speedup_coverage": 0.75,
                         "speedup_ratios": r})  # fmt: skip
        return {"results": rows, "futile": []}

    monkeypatch.setattr(run_mod, "run_matrix", matrix)
    s.measure(["a", "b"], finalists=True, fresh=frozenset({"a"}))
    assert seen["prior"] == {"b": earlier} and set(seen["gate"]) == {"a", "b"}
    assert s.rows["a"]["pair_ratios"] == {"32/32": [1.95, 1.96, 1.97]}
    assert s.rows["b"]["pair_ratios"] == {"32/32": [1.7, 1.7, 1.7, 1.95, 1.96, 1.97]}
    assert s.rows["a"].get("rechecked") and not s.rows["b"].get("rechecked")
    assert s.rows["a"]["gated"] and s.rows["a"]["speedup"] == 1.96
    # a run of its own decides anew; each gated run is counted
    assert "unconfirmable" not in s.rows["a"]
    assert s.rows["a"]["gated_runs"] == s.rows["b"]["gated_runs"] == 1


def test_a_shape_one_gated_run_leaves_near_the_budget_is_measured_again_in_its_own():
    """The walk decides a shape's speed by gated runs; one that a run leaves unconfirmed with
    its median within the model's error of the budget gets one more run of its own (earlier
    rounds not pooled); one far under it, or already measured twice, does not."""
    from minitron_deploy.search.run import _finalists

    s = _search(1.8)
    s.fit, s.seed_ids, s.log = {}, [], lambda *a: None
    s.cfg = s.cfg.model_copy(update={"top_k": 1})
    s.rows = {
        "x": _row(id="x", measured=False, speedup=1.9, family="mixed", zero_shot_loss=5.0),
        "y": _row(id="y", measured=False, speedup=1.95, family="mixed", zero_shot_loss=5.5),
        "far": _row(id="far", measured=False, speedup=1.85, family="width", zero_shot_loss=6.0),
    }
    runs = {"x": [1.75, 1.95], "far": [1.5]}  # what each of its runs measures (stand-in)
    calls = []

    def measure(ids, finalists=False, fresh=frozenset()):  # stand-in for the engine's runs
        calls.append((sorted(ids), sorted(fresh)))
        for i in ids:
            t, n = runs[i].pop(0), s.rows[i].get("gated_runs", 0) + 1
            s.rows[i].update(measured=True, speedup=t, speedup_lo=t - 0.03, speedup_hi=t + 0.03,
                             gated=True, gated_runs=n)  # fmt: skip

    s.measure, s.refit = measure, lambda: None
    assert _finalists(s, ["x", "y", "far"]) == ["x"]
    # x at 1.75 [1.72, 1.78] is within 5% of 1.8: measured again alone (1.95: confirmed), so y
    # is never measured; far at 1.5 is not
    assert calls == [(["far", "x"], []), (["x"], ["x"])]
    assert not s.rows["y"]["measured"] and not s.retry(s.rows["far"])
    assert not s.retry({**s.rows["x"], "speedup": 1.75, "speedup_lo": 1.72})  # measured twice


def test_a_calibration_shape_measured_far_off_is_measured_again_before_the_model_is_used():
    """One calibration shape measured 25% low in a noisy run (the others' fit predicts it far
    off) is measured once more in a run of its own before the band is set; with every shape
    measured well, nothing is measured again. The engine's runs are a stand-in here."""
    from minitron_deploy.search.run import CALIBRATION_OUTLIER, Search

    cands = _grid()
    calib = [cands[i].id for i in (0, 9, 20, 31, 42, 50, 61, 70, 80)]

    def search(first_runs):
        rng = random.Random(3)
        s = Search.__new__(Search)
        s.cfg = SimpleNamespace(speed=((32, 64), None, 9))
        s.source, s.cands, s.rows, s.fit = SMOL, {c.id: c for c in cands}, {}, None
        s.log = lambda *a: None
        for c in cands:
            s.rows[c.id] = {"id": c.id, "measured": False, "speedup": None,
                            "predicted_speedup": None}  # fmt: skip
        runs = {i: [*first_runs.get(i, []), _measured(s.cands[i], 0.02, rng)] for i in calib}
        calls = []

        def measure(ids, finalists=False, fresh=frozenset()):  # stand-in for the engine's runs
            calls.append((list(ids), sorted(fresh)))
            for i in ids:
                sp = runs[i].pop(0)
                m = min(sp.values())
                if i in fresh:
                    s.rows[i].setdefault("earlier", []).append({"speedup": s.rows[i]["speedup"]})
                s.rows[i].update(measured=True, pair_speedups=sp, speedup=m,
                                 speedup_lo=m * 0.98, speedup_hi=m * 1.02)  # fmt: skip

        s.measure = measure
        s.calibrate(calib)
        return s, calls

    bad = calib[4]
    low = {p: 0.75 * v for p, v in _measured(next(c for c in cands if c.id == bad)).items()}
    s, calls = search({bad: [low]})
    assert calls == [(calib, []), ([bad], [bad])]
    assert s.rows[bad]["earlier"][0]["speedup"] == pytest.approx(min(low.values()))
    assert s.fit["measured_again"] == [bad] and s.fit["fits"] == 2
    assert "calibration" in s.rows[bad]["again"]
    loo = [abs(s.rows[i]["loo_speedup"] / s.rows[i]["speedup"] - 1) for i in calib]
    assert max(loo) <= CALIBRATION_OUTLIER and s.band < 0.10
    s, calls = search({})
    assert calls == [(calib, [])] and "measured_again" not in s.fit
