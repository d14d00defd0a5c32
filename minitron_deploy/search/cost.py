"""The search's cost model: what a candidate shape costs on the bench engine, per ISL/OSL pair.

One exponent of the compute-ideal speedup cannot describe every family of shapes: on a CPU,
dropping a layer also drops its fixed per-call overhead (kernel launches, norms, the Python of
the layer), so depth-pruned shapes run faster than their FLOPs say, while width pruning only
shrinks the matrix products. The model therefore splits a generation's time (at the
candidate's batch and the pair's ISL/OSL) into terms a shape's sizes set separately:

    time = c_attn * L * h * d * (2 q + 2 kv)      (attention projections: weights x tokens)
         + c_ffn  * L * 3 * h * f                   (gate, up, down projections)
         + c_ctx  * L * q * d                       (attention over the cached context)
         + c_head * h * V                           (lm-head)
         + c_layer * L                              (per-layer fixed overhead)
         + c_0                                      (per-call overhead: sampling, embedding)

(L layers, h hidden, f FFN, q query heads, kv KV heads, d head_dim, V vocabulary), with one set
of non-negative coefficients per ISL/OSL pair fitted by least squares on relative error to
measured shapes. What is measured is the candidate's time over the source's in the same
interleaved rounds (load on a shared host hits both), so the coefficients are in units of the
source's time: speedup = (candidate batch / source batch) / predicted relative time. Standard
library only: NNLS over at most 6 features is solved exactly by trying every subset of
features (least squares on each, the best one whose coefficients are all non-negative).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

from minitron_deploy.model.shapes import LlamaShape

FEATURES = ("attn_proj", "ffn", "attn_ctx", "lm_head", "layers", "const")


def features(shape: LlamaShape) -> list[float]:
    """The shape's terms of the cost model, in the order of FEATURES."""
    L, h, d = shape.num_hidden_layers, shape.hidden_size, shape.head_dim
    q, kv = shape.num_attention_heads, shape.num_key_value_heads
    return [
        float(L * h * d * (2 * q + 2 * kv)),
        float(L * 3 * h * shape.intermediate_size),
        float(L * q * d),
        float(h * shape.vocab_size),
        float(L),
        1.0,
    ]


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Solve the square system a x = b by Gaussian elimination with partial pivoting; None
    when it is singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-12:
            return None
        m[col], m[piv] = m[piv], m[col]
        for r in range(n):
            if r != col:
                f = m[r][col] / m[col][col]
                m[r] = [x - f * y for x, y in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def nnls(x: Sequence[Sequence[float]], y: Sequence[float]) -> list[float]:
    """Non-negative least squares min ||X c - y||, c >= 0, exactly, for a few columns: the
    least-squares fit on every subset of columns, the best one with no negative coefficient
    (columns are scaled to unit norm first for a well-conditioned solve)."""
    n_feat = len(x[0])
    scale = [math.sqrt(sum(r[j] ** 2 for r in x)) or 1.0 for j in range(n_feat)]
    xs = [[r[j] / scale[j] for j in range(n_feat)] for r in x]
    best, best_err = [0.0] * n_feat, sum(v * v for v in y)
    for k in range(1, n_feat + 1):
        for cols in itertools.combinations(range(n_feat), k):
            if k > len(y):
                continue
            ata = [[sum(r[i] * r[j] for r in xs) for j in cols] for i in cols]
            atb = [sum(r[i] * v for r, v in zip(xs, y, strict=True)) for i in cols]
            sol = _solve(ata, atb)
            if sol is None or min(sol) < 0:
                continue
            c = [0.0] * n_feat
            for i, v in zip(cols, sol, strict=True):
                c[i] = v
            err = sum(
                (sum(ci * ri for ci, ri in zip(c, r, strict=True)) - v) ** 2
                for r, v in zip(xs, y, strict=True)
            )
            if err < best_err - 1e-15:
                best, best_err = c, err
    return [c / s for c, s in zip(best, scale, strict=True)]


class CostModel:
    """Relative time (candidate over source, per ISL/OSL pair) as a non-negative sum of the
    FEATURES terms; `speedup` is the lowest over the pairs, like a measured one."""

    def __init__(self, batch_ratio: float, coef: dict[str, list[float]]):
        self.batch_ratio, self.coef = batch_ratio, coef

    @classmethod
    def fit(
        cls, points: Sequence[tuple[LlamaShape, dict[str, float]]], batch_ratio: float
    ) -> CostModel:
        """Fit on measured shapes: (shape, {pair: measured speedup}); rows are weighted by
        1 / the measured relative time, so the fit minimises relative error."""
        pairs = sorted({p for _, sp in points for p in sp})
        coef = {}
        for p in pairs:
            rows, ys = [], []
            for shape, sp in points:
                if sp.get(p):
                    rel = batch_ratio / sp[p]  # candidate's time over the source's
                    rows.append([v / rel for v in features(shape)])
                    ys.append(1.0)
            coef[p] = nnls(rows, ys)
        return cls(batch_ratio, coef)

    def pair_speedups(self, shape: LlamaShape) -> dict[str, float]:
        f = features(shape)
        out = {}
        for p, c in self.coef.items():
            t = sum(ci * fi for ci, fi in zip(c, f, strict=True))
            out[p] = self.batch_ratio / t if t > 0 else math.inf
        return out

    def speedup(self, shape: LlamaShape) -> float:
        return min(self.pair_speedups(shape).values())

    def describe(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "coef": self.coef, "batch_ratio": self.batch_ratio}


def relative_errors(pred: Sequence[float], meas: Sequence[float]) -> dict[str, Any]:
    """|predicted / measured - 1| summarised: {"n", "median", "max"} (None when empty)."""
    errs = [abs(p / m - 1) for p, m in zip(pred, meas, strict=True) if m]
    if not errs:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(errs), "median": statistics.median(errs), "max": max(errs)}


def beyond_interval(
    pred: Sequence[float], lo: Sequence[float], hi: Sequence[float]
) -> dict[str, Any]:
    """How far predictions fall outside the measured intervals [lo, hi], relative to the nearer
    end as `relative_errors` is to the median, |p / end - 1| (0 inside; so never more than the
    error against a median inside the interval): the model's error beyond what the measurement
    itself can tell apart. {"n", "median", "max"}.
    With 3 rounds a shape's interval is ~13% wide (median, this host): comparing with the median
    alone would count that noise as the model's."""
    errs = [
        max(0.0, 1 - p / low, p / high - 1)
        for p, low, high in zip(pred, lo, hi, strict=True)
        if p and low and high
    ]
    if not errs:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(errs), "median": statistics.median(errs), "max": max(errs)}


def leave_one_out(
    points: Sequence[tuple[LlamaShape, dict[str, float]]], batch_ratio: float
) -> list[float]:
    """Each point's lowest-pair speedup predicted by the model fitted on the others."""
    out = []
    for j in range(len(points)):
        rest = [pt for i, pt in enumerate(points) if i != j]
        out.append(CostModel.fit(rest, batch_ratio).speedup(points[j][0]))
    return out
