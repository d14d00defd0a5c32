"""Interval helpers (minitron_deploy.stats): exact values and coverage on synthetic data."""

from __future__ import annotations

import math
import random

import pytest

from minitron_deploy.stats import (
    bootstrap_mean,
    median_interval,
    paired_bootstrap,
    paired_ratio_bootstrap,
    ratio_interval,
)


def test_median_interval_order_statistics():
    iv = median_interval([5, 1, 4, 2, 3, 6])  # n = 6: [min, max], 1 - 2/64
    assert (iv["median"], iv["lo"], iv["hi"]) == (3.5, 1, 6)
    assert iv["coverage"] == pytest.approx(1 - 2 / 64)
    iv = median_interval(range(1, 21))  # n = 20: k = 6, coverage 1 - 2 P(Bin <= 5) = 0.9586
    assert (iv["lo"], iv["hi"]) == (6, 15)
    assert iv["coverage"] == pytest.approx(1 - 2 * sum(math.comb(20, i) for i in range(6)) / 2**20)
    assert median_interval([1, 2, 3])["coverage"] == pytest.approx(0.75)  # below 95%: said so


def test_median_interval_covers_the_true_median_at_its_stated_rate():
    rng = random.Random(0)
    true_median = math.log(2)  # Exp(1)
    for n in (6, 9, 20):
        trials, hit = 3000, 0
        for _ in range(trials):
            iv = median_interval([rng.expovariate(1.0) for _ in range(n)])
            hit += iv["lo"] <= true_median <= iv["hi"]
        stated = median_interval(list(range(n)))["coverage"]
        assert stated >= 0.95
        assert abs(hit / trials - stated) < 0.015, (n, hit / trials, stated)


def test_ratio_interval_pairs_rounds():
    base = [100, 50, 80, 120, 90, 70]  # load changes between rounds, alike for both
    var = [2 * b for b in base]
    iv = ratio_interval(var, base)
    assert iv["median"] == iv["lo"] == iv["hi"] == 2.0
    with pytest.raises(ValueError):
        ratio_interval([1, 2], [1])


def test_bootstrap_mean_coverage_and_determinism():
    rng = random.Random(1)
    trials, hit = 300, 0
    for t in range(trials):
        xs = [rng.gauss(3.0, 1.0) for _ in range(40)]
        iv = bootstrap_mean(xs, resamples=1000, seed=t)
        hit += iv["lo"] <= 3.0 <= iv["hi"]
    assert 0.89 <= hit / trials <= 0.99, hit / trials  # nominal 95%, percentile bootstrap
    xs = [1.0, 2.0, 4.0, 8.0]
    assert bootstrap_mean(xs) == bootstrap_mean(xs)  # seeded: reports are reproducible


def test_paired_bootstrap_sees_a_shift_hidden_by_item_spread():
    rng = random.Random(2)
    items = [rng.uniform(2.0, 8.0) for _ in range(50)]  # windows differ a lot in difficulty
    a = [x + 0.1 + rng.gauss(0, 0.02) for x in items]
    iv = paired_bootstrap(a, items)
    assert iv["diff"] == pytest.approx(sum(a) / 50 - sum(items) / 50)
    assert 0.08 < iv["lo"] < iv["diff"] < iv["hi"] < 0.12  # paired: tight around the shift
    unpaired = bootstrap_mean(a)["hi"] - bootstrap_mean(a)["lo"]
    assert iv["hi"] - iv["lo"] < unpaired / 5


def test_paired_ratio_bootstrap_covers_the_true_share_and_pairs_items():
    """A student that answers right on a random 80% of the items the teacher answers right
    keeps 80% of its accuracy: the interval covers 0.8 at about the stated rate, and pairing
    makes it narrower than the two accuracies' own intervals would allow."""
    rng = random.Random(3)
    trials, hit = 100, 0
    for t in range(trials):
        teacher = [float(rng.random() < 0.5) for _ in range(200)]
        student = [x * float(rng.random() < 0.8) for x in teacher]
        iv = paired_ratio_bootstrap(student, teacher, resamples=400, seed=t)
        assert iv["ratio"] == pytest.approx(sum(student) / sum(teacher))
        assert iv["lo"] <= iv["ratio"] <= iv["hi"]
        hit += iv["lo"] <= 0.8 <= iv["hi"]
    assert 0.88 <= hit / trials <= 0.99, hit / trials
    s, te = bootstrap_mean(student), bootstrap_mean(teacher)
    assert iv["hi"] - iv["lo"] < s["hi"] / te["lo"] - s["lo"] / te["hi"]
    assert paired_ratio_bootstrap(student, teacher) == paired_ratio_bootstrap(student, teacher)
    with pytest.raises(ValueError, match="denominator"):
        paired_ratio_bootstrap([1.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="differ in number"):
        paired_ratio_bootstrap([1.0], [1.0, 0.0])


def test_downstream_summary_pairs_students_with_the_teacher_on_the_same_items():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "downstream.py"
    spec = importlib.util.spec_from_file_location("downstream", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = random.Random(3)
    teacher = {str(i): float(rng.random() < 0.8) for i in range(50)}
    same = dict(teacher)  # a student right exactly where the teacher is
    worse = {d: (v if int(d) % 5 else 0.0) for d, v in teacher.items()}  # loses every 5th item
    worse.pop("7")  # an item one model lacks is left out of the pairing
    out = mod.summarize({"teacher": {"t": teacher}, "same": {"t": same}, "worse": {"t": worse}})
    d_same, d_worse = out["t"]["same"]["vs_teacher"], out["t"]["worse"]["vs_teacher"]
    assert d_same["diff"] == d_same["lo"] == d_same["hi"] == 0.0
    assert d_worse["n"] == 49 and d_worse["hi"] < 0  # a real loss: interval below 0
    lost = sum(teacher[d] - worse[d] for d in worse) / 49
    assert d_worse["diff"] == pytest.approx(-lost)
