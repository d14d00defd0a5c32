"""Architecture search under a measured budget (P1's search, against the user's engine).

1. Enumerate the grid (`candidates.py`) and the seed recipe's shapes (`rank.seed_targets`);
   drop shapes over `max_params` / `max_memory_gb`.
2. `min_speedup`: measure candidates on the profile's bench engine with random weights of their
   shape (speed does not depend on the values), the source at `batch[0]` and each candidate at
   `batch[1]`, at every ISL/OSL pair (the lowest speedup counts). With `measure: model`,
   `calibration_shapes` shapes spanning the families (depth-only, width-only, mixed) and the
   cost model's terms are measured, the per-pair cost model (`cost.py`) is fitted and validated
   leave-one-out and the rest is predicted (refitted on every measured shape after each batch
   of measurements; each shape's prediction is validated against its later measurement). A
   measured shape meets the budget only by its interval's lower bound; finalists are measured
   again (the gate's extra rounds pooled with their earlier ones) before they count; a seed
   shape measured a little under the budget only in a long run without the gate (the
   calibration's) is measured again in a run of its own, its earlier rounds not pooled.
3. Rank the shapes that could meet the budget (measured, or predicted above it or within the
   model's error of it) by zero-shot validation loss, each pruned from the same importance
   scores (layers: by default the contiguous block whose removal hurts a validation loss
   least, as the prune stage chooses them): at most `max_candidates`, the largest of each
   family in turn. Walk each family's list in zero-shot order, measuring every shape with the
   gate when it is reached, before it is kept or dropped (one under the budget gives its
   place to the next; shapes below a confirmed one of their family, and shapes never ranked,
   are never measured: their speed cannot make them finalists); distill the best `top_k` of
   each family and every seed shape that meets the budget for `steps` steps (same data and
   seed for all; finished candidates are kept in a cache shared by runs) and re-rank by the
   mean of validation and held-out losses. With `agreement_steps`, distill them again
   that long (those within `agreement_margin` nats of the best), report the Kendall tau of the
   two orders and take the winner from the longer one.
4. The winner (pruned, before the short distillation) is the stage's model; the report lists
   every candidate and draws loss against speedup with the budget line and the Pareto front.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.bench import run_matrix
from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.layers import layer_loss_ranking, loss_key
from minitron_deploy.compress.slicing import prune_model
from minitron_deploy.console import track
from minitron_deploy.engines.registry import check_engine
from minitron_deploy.errors import InputError
from minitron_deploy.evaluation.loss import evaluate_loss
from minitron_deploy.fsutil import atomic_write_json, atomic_write_text, sha256_json
from minitron_deploy.hardware import compute_dtype, native_autocast
from minitron_deploy.model.io import llama_config, load_llama, read_config, save_llama
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.search.candidates import (
    Candidate,
    enumerate_candidates,
    ideal_speedup,
    memory_gb,
)
from minitron_deploy.search.cost import (
    CostModel,
    beyond_interval,
    features,
    leave_one_out,
    relative_errors,
)
from minitron_deploy.search.rank import (
    FAMILIES,
    combined_loss,
    family,
    kendall_tau,
    seed_targets,
)
from minitron_deploy.search.report import pareto_png, report_markdown
from minitron_deploy.stats import LEVEL, median_rank

# the least relative error a prediction is trusted to: candidates predicted within it of the
# budget are measured even when the cost model's validation error is smaller
MIN_BAND = 0.03
# shapes per interleaved matrix run (each holds its engine in memory while the run lasts; the
# default 9 calibration shapes share one run, and so the source's rounds)
MEASURE_CHUNK = 10
# standard errors of a median by which a measured shape's median may still rise before it is
# passed over as unconfirmable: the rule is applied after every added gate round, and two keep
# a shape the rounds would confirm from being dropped by a low start (one dropped the depth
# seed at 1.74x on 3 rounds in a float32 record; it measured 2.00x in the bench)
HOPE_SE = 2.0
# a calibration shape the others' fit predicts off by more than this (of its measured median) is
# measured again in a run of its own before the model is used - at most CALIBRATION_AGAIN shapes,
# worst first. One float32 run measured h576-f1536-a9x3-l20 at 1.17x [0.99, 1.23] among the
# calibration shapes (1.53x in the record before): its leave-one-out error (31%) became the
# band, 50 shapes counted as near the budget and the search took 31 min.
CALIBRATION_OUTLIER = 0.10
CALIBRATION_AGAIN = 2

if TYPE_CHECKING:
    from minitron_deploy.bench.config import BenchConfig
    from minitron_deploy.data.shards import Split
    from minitron_deploy.distill.config import DistillConfig
    from minitron_deploy.search.config import SearchConfig


def _bytes_per_value(bench: BenchConfig) -> int:
    dt = compute_dtype(bench.dtype, bench.device) if bench.dtype == "auto" else bench.dtype
    return 4 if "32" in str(dt) else 2


class Search:
    """One search: candidates with their numbers, filled in step by step."""

    def __init__(
        self,
        teacher_dir: Path,
        scores: dict,
        cfg: SearchConfig,
        bench: BenchConfig | None,
        cache: Path,
        *,
        progress: bool = True,
        log=print,
    ):
        self.teacher_dir, self.scores, self.cfg, self.bench = teacher_dir, scores, cfg, bench
        self.cache, self.progress, self.log = cache, progress, log
        self.source_cfg = read_config(teacher_dir)
        self.source = LlamaShape.from_config(self.source_cfg)
        self.rows: dict[str, dict[str, Any]] = {}
        self.batch = cfg.batch or (32, 64)  # memory at the candidate's bench batch
        self.fit: dict[str, Any] | None = None
        self.cost_model: CostModel | None = None
        self.band = MIN_BAND
        self.seed_ids: list[str] = []
        self._model = None
        # wall seconds per phase and how much each did (the report's time line)
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextmanager
    def timed(self, phase: str, n: int = 1):
        """Count the block's wall time and `n` items to `phase`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0
            self.counts[phase] = self.counts.get(phase, 0) + n

    # ------------------------------------------------------------------ budget
    def context(self) -> int:
        pairs = self.bench.pairs() if self.bench is not None else [(128, 128)]
        return max(i + o for i, o in pairs)

    def seeds(self) -> list[Candidate]:
        """The seed recipe's shapes the mode allows (`rank.seed_targets`)."""
        if not self.cfg.seed_shapes:
            return []
        out = []
        for t in seed_targets(self.source, self.cfg.grid.multiple or 64):
            c = Candidate(**t)
            fam = family(c, self.source)
            if (self.cfg.mode, fam) in (("width", "depth"), ("depth", "width")):
                continue
            if c.shape(self.source) != self.source:
                out.append(c)
        return out

    def enumerate(self) -> list[Candidate]:
        b = self.cfg.budget
        cands = enumerate_candidates(self.source, self.cfg)
        self.seed_ids = []
        for c in self.seeds():
            if c not in cands:
                cands.append(c)
            self.seed_ids.append(c.id)
        ctx = self.context()
        bpv = _bytes_per_value(self.bench) if self.bench is not None else 2
        for c in cands:
            shape = c.shape(self.source)
            row = {
                "id": c.id,
                **c.targets(),
                "family": family(c, self.source),
                "seed": c.id in self.seed_ids,
                "params": shape.num_parameters,
                "memory_gb": memory_gb(shape, self.batch[1], ctx, bpv),
                "ideal_speedup": ideal_speedup(self.source, shape, ctx // 2),
                "speedup": None,
                "speedup_lo": None,
                "speedup_hi": None,
                "predicted_speedup": None,
                "measured": False,
                "zero_shot_loss": None,
                "reranked_loss": None,
                "reranked_holdout": None,
                "reranked_score": None,
                "long_score": None,
                "chosen": False,
                "rejected": None,
            }
            if b.max_params is not None and row["params"] > b.max_params:
                row["rejected"] = "max_params"
            elif b.max_memory_gb is not None and row["memory_gb"] > b.max_memory_gb:
                row["rejected"] = "max_memory_gb"
            self.rows[c.id] = row
        self.cands = {c.id: c for c in cands}
        return cands

    def _random_model(self, c: Candidate) -> Path:
        """A checkpoint of the candidate's shape with random weights (for speed only)."""
        import torch
        from transformers import LlamaForCausalLM

        cfg = c.config(self.source_cfg)
        out = self.cache / "shapes" / sha256_json(cfg)[:16]
        if (out / "config.json").is_file():
            return out
        # built on the meta device and filled like HF's init (normal(0, initializer_range),
        # norms 1) without its per-module pass: ~4x faster, and a search builds dozens
        with torch.device("meta"):
            model = LlamaForCausalLM(llama_config(cfg))
        model = model.to_empty(device="cpu")
        gen = torch.Generator().manual_seed(0)
        std = model.config.initializer_range
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std, generator=gen)
        model.tie_weights()
        save_llama(
            model,
            out,
            source=self.teacher_dir,
            dtype=self.source_cfg.get("torch_dtype") or "bfloat16",
            overwrite=True,
        )
        return out

    def _speed_model(self, c: Candidate) -> Any:
        """What the bench runs to measure a candidate's speed: for the built-in engine, an
        engine of its shape holding random weights made in memory (speed does not depend on
        the values; no checkpoint is written and read back, which took ~5-10 s per shape on 2
        cores); for an engine that reads a folder, a random-weight checkpoint."""
        if self.bench.engine != "torch":
            return self._random_model(c)
        import torch

        from minitron_deploy.engines.torch_engine import TorchEngine
        from minitron_deploy.engines.torch_weights import random_state_dict

        cfg = c.config(self.source_cfg)
        b = self.bench
        sd = random_state_dict(cfg, torch.bfloat16, seed=0)  # as a bf16 checkpoint would hold
        return TorchEngine(
            None, config=cfg, state_dict=sd, dtype=b.dtype, device=b.device, **b.engine_opts
        )

    def measure(
        self, ids: list[str], finalists: bool = False, fresh: frozenset[str] = frozenset()
    ) -> None:
        """Measured speedups of candidates (the source measured in the same matrix run): the
        slowest ISL/OSL pair's median and 95% interval. Finalists are measured with the budget
        as a speedup gate, so rounds are added while an interval straddles it; a shape measured
        before keeps its rounds (paired ratios pooled with the new ones, up to the bench's
        `gate_max_repeats`), except those in `fresh` (their earlier rounds are replaced)."""
        ids = [i for i in ids if finalists or i in fresh or not self.rows[i]["measured"]]
        if not ids:
            return
        self.log(f"search: measuring {len(ids)} shape(s) on {self.bench.engine}")
        with self.timed("measure", len(ids)):
            for start in range(0, len(ids), MEASURE_CHUNK):
                self._measure_chunk(ids[start : start + MEASURE_CHUNK], finalists, fresh)

    def _measure_chunk(self, ids: list[str], finalists: bool, fresh: frozenset[str]) -> None:
        """One interleaved matrix run of the source and `ids` (`_speed_model`: their engines
        are closed, their random-weight checkpoints removed afterwards: recreating one is
        cheaper than keeping every shape)."""

        made = [(i, self._speed_model(self.cands[i])) for i in ids]
        models = [("source", self.teacher_dir), *made]
        (b0, b1), _, _ = self.cfg.speed
        batch = (b0, *([b1] * len(ids)))
        bench = self.bench.model_copy(update={"batch": batch})
        ms = self.cfg.budget.min_speedup
        gate = {i: ms for i in ids} if finalists and ms is not None else None
        # a re-measured shape's earlier rounds (paired with the source's) count with the new
        prior = {
            i: self.rows[i]["pair_ratios"]
            for i in ids
            if self.rows[i].get("pair_ratios") and i not in fresh
        }

        def futile(_: str, ratios: list[float]) -> bool:  # no gate round could confirm it here
            return not self.could_confirm({"cell": ratios})

        try:
            res = run_matrix(
                models, bench, progress=self.progress, gate=gate, prior=prior, futile=futile
            )
        finally:
            for _, m in made:
                if isinstance(m, Path):
                    shutil.rmtree(m, ignore_errors=True)
                else:
                    m.close()
        for i in ids:
            mine = [r for r in res["results"] if r["model"] == i]
            worst = min(mine, key=lambda r: r["speedup_vs_base"])
            if i in fresh and self.rows[i]["measured"]:  # the run it replaces, for the report
                self.rows[i].setdefault("earlier", []).append(
                    {k: self.rows[i][k] for k in ("speedup", "speedup_lo", "speedup_hi")}
                )
            self.rows[i].update(
                speedup=worst["speedup_vs_base"],
                speedup_lo=min(r["speedup_lo"] for r in mine),
                speedup_hi=worst["speedup_hi"],
                speedup_coverage=min(r["speedup_coverage"] or 0 for r in mine),
                measured=True,
                pair_speedups={f"{r['isl']}/{r['osl']}": r["speedup_vs_base"] for r in mine},
                pair_ratios={f"{r['isl']}/{r['osl']}": r["speedup_ratios"] for r in mine},
                gated=bool(gate) or self.rows[i].get("gated", False),
                gated_runs=self.rows[i].get("gated_runs", 0) + bool(gate),
            )
            if i in fresh:  # a run of its own (`recheck`, `retry`): earlier rounds replaced
                self.rows[i]["rechecked"] = True
                self.rows[i].pop("unconfirmable", None)
            if i in res.get("futile", []):  # the gate stopped adding its rounds
                self.rows[i]["unconfirmable"] = True

    # -------------------------------------------------------------- cost model
    def pair_speedups(self, i: str) -> dict[str, float]:
        return self.rows[i].get("pair_speedups") or {}

    def calibration_ids(self, ids: list[str]) -> list[str]:
        """`calibration_shapes` shapes that span the families and the cost model's terms: taken
        in turn from each family (depth-only, width-only, mixed), each time the shape farthest
        (in log feature space) from those already taken; the first is the family's shape
        nearest the median compute-ideal speedup."""
        k = min(self.cfg.speed[2], len(ids))
        feats = {
            i: [math.log(v) for v in features(self.cands[i].shape(self.source))[:5]] for i in ids
        }
        spans = [
            (max(f[j] for f in feats.values()) - min(f[j] for f in feats.values())) or 1.0
            for j in range(5)
        ]
        by_fam = {fam: [i for i in ids if self.rows[i]["family"] == fam] for fam in FAMILIES}
        chosen: list[str] = []

        def dist(i: str) -> float:
            return min(
                sum(((a - b) / w) ** 2 for a, b, w in zip(feats[i], feats[j], spans, strict=True))
                for j in chosen
            )

        while len(chosen) < k:
            grew = False
            for fam in FAMILIES:
                pool = [i for i in by_fam[fam] if i not in chosen]
                if not pool or len(chosen) >= k:
                    continue
                if not any(self.rows[j]["family"] == fam for j in chosen):
                    ideal = sorted(self.rows[i]["ideal_speedup"] for i in pool)
                    mid = ideal[len(ideal) // 2]
                    pick = min(pool, key=lambda i: (abs(self.rows[i]["ideal_speedup"] - mid), i))
                else:
                    pick = max(pool, key=lambda i: (dist(i), i))
                chosen.append(pick)
                grew = True
            if not grew:
                break
        return chosen

    def _points(self, ids: list[str]):
        return [(self.cands[i].shape(self.source), self.pair_speedups(i)) for i in ids]

    def fit_cost_model(self, ids: list[str], again: bool = False) -> None:
        """Fit the per-pair cost model (`cost.py`) on measured shapes, validate it leave-one-out
        on them, and predict every shape not measured. The first fit is on the calibration
        shapes; later ones (`refit`) on every shape measured by then, so a prediction of a
        shape is always made before it is measured (its `predicted_speedup`); `again` redoes
        the calibration fit after one of its shapes was measured again (`calibrate`)."""
        ids = [i for i in ids if self.rows[i]["measured"] and self.pair_speedups(i)]
        (b0, b1), _, _ = self.cfg.speed
        model = CostModel.fit(self._points(ids), b1 / b0)
        loo = leave_one_out(self._points(ids), b1 / b0) if len(ids) > 2 else []
        err = relative_errors(loo, [self.rows[i]["speedup"] for i in ids])
        outside = beyond_interval(
            loo,
            [self.rows[i]["speedup_lo"] for i in ids[: len(loo)]],
            [self.rows[i]["speedup_hi"] for i in ids[: len(loo)]],
        )
        first = self.fit is None or again  # `again`: the calibration fit redone (`calibrate`)
        if first:
            for i, p in zip(ids, loo, strict=False):
                self.rows[i]["loo_speedup"] = p
        self.cost_model = model
        # Candidates predicted within the model's own error of the budget are measured: the
        # leave-one-out error beyond each shape's measured interval (the rest of the distance
        # from the median is the measurement's noise, which a measured candidate's lower bound
        # handles), at least MIN_BAND.
        self.band = max(outside["max"] or 0.0, MIN_BAND)
        self.fit = {
            **(self.fit or {"calibration": ids}),
            **model.describe(),
            "shapes": len(ids),
            "fitted_on": ids,
            "leave_one_out": err,
            "leave_one_out_beyond_interval": outside,
            "band": self.band,
            "fits": (self.fit or {}).get("fits", 0) + 1,
        }
        for r in self.rows.values():
            if first or not r["measured"]:  # a measured shape keeps its earlier prediction
                pred = model.speedup(self.cands[r["id"]].shape(self.source))
                r["predicted_speedup"] = pred
            if not r["measured"]:
                r["speedup"] = r["predicted_speedup"]

    def calibrate(self, ids: list[str]) -> None:
        """Measure the calibration shapes `ids` and fit the cost model on them; then, while the
        worst leave-one-out prediction misses its shape's measured median by more than
        CALIBRATION_OUTLIER, measure that shape again in a run of its own (its first rounds
        replaced, kept in `earlier`) and fit again, at most CALIBRATION_AGAIN shapes. With one
        shape measured far off in a noisy run, the others' fit predicts it worst: one such
        point set the band (and so how many shapes count as near the budget) to its error."""
        self.measure(ids)
        self.fit_cost_model(ids)
        for _ in range(CALIBRATION_AGAIN):
            errs = {
                i: abs(r["loo_speedup"] / r["speedup"] - 1)
                for i in ids
                if (r := self.rows[i]).get("loo_speedup") and r["speedup"] and not r.get("again")
            }
            worst = max(errs, key=lambda i: (errs[i], i), default=None)
            if worst is None or errs[worst] <= CALIBRATION_OUTLIER:
                break
            self.log(
                f"search: calibration shape {worst} predicted {errs[worst]:.0%} off by the "
                "others' fit: measured again in a run of its own"
            )
            self.rows[worst]["again"] = f"calibration: leave-one-out error {errs[worst]:.0%}"
            self.measure([worst], fresh=frozenset([worst]))
            self.fit_cost_model(ids, again=True)  # its leave-one-out predictions and the band
            self.fit["outlier"] = CALIBRATION_OUTLIER
            self.fit["measured_again"] = [i for i in ids if self.rows[i].get("earlier")]

    def refit(self) -> None:
        """Fit the cost model again on every measured shape (more shapes, more runs: a run's
        common offset weighs less), predicting those not measured yet."""
        if self.fit:  # none with measure: all
            self.fit_cost_model([i for i, r in self.rows.items() if r["measured"]])

    def validation_errors(self) -> dict[str, Any]:
        """The cost model's error on shapes measured after the calibration fit, each against
        the prediction it had before it was measured (never fitted on)."""
        ids = [
            i
            for i, r in self.rows.items()
            if r["measured"] and r.get("predicted_speedup") and i not in self.fit["calibration"]
        ]
        pred = [self.rows[i]["predicted_speedup"] for i in ids]
        return {
            **relative_errors(pred, [self.rows[i]["speedup"] for i in ids]),
            "beyond_interval": beyond_interval(
                pred,
                [self.rows[i]["speedup_lo"] for i in ids],
                [self.rows[i]["speedup_hi"] for i in ids],
            ),
            "ids": ids,
        }

    def unfitted_errors(self) -> list[float]:
        """|relative error| of every prediction of a shape the model was not fitted on: the
        calibration shapes' leave-one-out ones and those made before measuring a shape measured
        later."""
        out = []
        for i, r in self.rows.items():
            if not r["measured"] or not r["speedup"]:
                continue
            if i in self.fit["calibration"]:
                pred = r.get("loo_speedup")
            else:
                pred = r.get("predicted_speedup")
            if pred:
                out.append(abs(pred / r["speedup"] - 1))
        return out

    # ------------------------------------------------------------------ budget checks
    def confirmed(self, row: dict[str, Any]) -> bool:
        """Meets every budget, a speedup by its measured interval's lower bound, the interval a
        real 95% one as the speedup gate requires (a budget met by noise, or by the range of
        3 rounds, is not met)."""
        ms = self.cfg.budget.min_speedup
        if row["rejected"] is not None:
            return False
        if ms is None:
            return True
        real = (row.get("speedup_coverage") or 0) >= LEVEL
        return row["measured"] and real and (row["speedup_lo"] or 0) >= ms

    def round_spread(self) -> float | None:
        """This host's spread of one round's speedup ratio in this search: the standard
        deviation of log ratios around each measured cell's mean, pooled over every cell
        (None before 6 degrees of freedom)."""
        ss, dof = 0.0, 0
        for r in self.rows.values():
            for v in (r.get("pair_ratios") or {}).values():
                if len(v) >= 2:
                    logs = [math.log(x) for x in v]
                    mean = statistics.fmean(logs)
                    ss += sum((x - mean) ** 2 for x in logs)
                    dof += len(v) - 1
        return math.sqrt(ss / dof) if dof >= 6 else None

    def confirmable(self, row: dict[str, Any]) -> bool:
        """Could the gate's rounds still confirm a measured shape on this host
        (`could_confirm` of its rounds so far)."""
        return self.could_confirm(row.get("pair_ratios") or {})

    def could_confirm(self, ratios: dict[str, list[float]]) -> bool:
        """Could `gate_max_repeats` rounds confirm a shape with these paired ratios per ISL/OSL
        cell: in every cell its median so far, raised by HOPE_SE standard errors of a median,
        times where the 95% interval's lower bound typically falls at `gate_max_repeats`
        rounds of this search's spread (the k-th of n normal order statistics), clears the
        budget. One that cannot is not measured again (and the gate stops adding rounds for
        it): its rounds would end with an interval straddling the budget, which is not met."""
        ms, sigma = self.cfg.budget.min_speedup, self.round_spread()
        if ms is None or sigma is None:
            return True
        n = self.bench.gate_max_repeats
        k, _ = median_rank(n)  # the lower bound is the k-th of n
        z = statistics.NormalDist().inv_cdf((k - 0.375) / (n + 0.25))  # < 0
        for v in ratios.values():
            if v:
                se = 1.2533 * sigma / math.sqrt(len(v))  # of the median of len(v) rounds
                if statistics.median(v) * math.exp(HOPE_SE * se + z * sigma) < ms:
                    return False
        return True

    def recheck(self, row: dict[str, Any]) -> bool:
        """A seed shape (always a candidate) measured only in a long ungated run, under the
        budget there by no more than the model's error beyond the measured intervals (which
        holds the run-to-run offset of this host): measured again in a run of its own with the
        gate, its earlier rounds not pooled, before it can be passed over. One such run put the
        depth seed at 1.72x [1.71, 1.83] among 9 calibration shapes; the bench run then measured
        it at 1.9-2.0x."""
        ms = self.cfg.budget.min_speedup
        return (
            ms is not None
            and row.get("id") in self.seed_ids
            and row["rejected"] is None
            and row["measured"]
            and not row.get("gated")
            and not self.confirmed(row)
            and (row["speedup_hi"] or 0) * (1 + self.band) >= ms
        )

    def retry(self, row: dict[str, Any]) -> bool:
        """A shape that one gated run left unconfirmed with its median within the model's error
        of the budget: measured once more in a run of its own (its earlier rounds not pooled)
        before it is passed over. A walked shape's speed is decided by gated runs of the source
        and a few shapes, and one such run can sit 10-15% low on a shared host (one had a
        shape's rounds from 0.84x to 2.43x at one ISL/OSL pair and passed over three shapes
        that measured 1.9-2.1x in other runs, the depth seed among them)."""
        ms = self.cfg.budget.min_speedup
        return (
            ms is not None
            and row["rejected"] is None
            and row.get("gated_runs") == 1
            and not self.confirmed(row)
            and (row["speedup"] or 0) * (1 + self.band) >= ms
        )

    def plausible(self, row: dict[str, Any]) -> bool:
        """Could meet the budget: confirmed; measured with an interval reaching it (measured
        again with the gate before it counts) or a seed to `recheck`; or predicted above it by
        more than the model's error (measured before it counts)."""
        ms = self.cfg.budget.min_speedup
        if row["rejected"] is not None:
            return False
        if ms is None or self.confirmed(row) or self.recheck(row):
            return True
        if row["measured"]:
            hopeless = row.get("gated") or row.get("unconfirmable")
            return not hopeless and (row["speedup_hi"] or 0) >= ms
        return (row["speedup"] or 0) * (1 - self.band) >= ms

    def possible(self, row: dict[str, Any]) -> bool:
        """Could meet the budget as far as is known: plausible, or predicted within the model's
        error of it (not measured yet)."""
        ms = self.cfg.budget.min_speedup
        if self.plausible(row):
            return True
        if ms is None or row["rejected"] is not None or row["measured"]:
            return False
        return (row["speedup"] or 0) * (1 + self.band) >= ms

    def near(self, row: dict[str, Any]) -> bool:
        """Not measured and predicted within the model's error of the budget (either side)."""
        return not row["measured"] and self.possible(row) and not self.plausible(row)

    def in_band(self) -> int:
        """Candidates still near the budget and never measured (outside the zero-shot set, or
        ranked below a confirmed shape of their family)."""
        return sum(self.near(r) for r in self.rows.values())

    def settled(self, i: str) -> bool:
        """No more measuring can change whether it meets the budget."""
        r = self.rows[i]
        done = r.get("gated") or r.get("unconfirmable")
        return self.confirmed(r) or bool(done) or self.cfg.budget.min_speedup is None

    def no_candidate(self) -> InputError:
        """The binding constraint and the closest candidate, for a budget nobody meets."""
        b = self.cfg.budget

        def slack(r: dict[str, Any]) -> tuple[float, str]:
            parts = []
            if b.min_speedup is not None:
                parts.append(((r["speedup"] or 0) / b.min_speedup, "min_speedup"))
            if b.max_params is not None:
                parts.append((b.max_params / r["params"], "max_params"))
            if b.max_memory_gb is not None:
                parts.append((b.max_memory_gb / r["memory_gb"], "max_memory_gb"))
            return min(parts)

        best = max(self.rows.values(), key=lambda r: slack(r)[0])
        how = "measured" if best["measured"] else "predicted"
        sp = f"{best['speedup']:.2f}x ({how})" if best["speedup"] is not None else "-"
        return InputError(
            f"no candidate of {len(self.rows)} meets the budget; the binding constraint is "
            f"{slack(best)[1]}: the closest candidate {best['id']} has speedup {sp}, "
            f"{best['params'] / 1e6:.1f}M params, {best['memory_gb']:.2f} GiB",
            where="search.budget",
            fix="relax the budget, or widen search.grid (smaller sizes, fewer layers)",
        )

    # ------------------------------------------------------------------ ranking
    def teacher(self):
        if self._model is None:
            self._model = load_llama(self.teacher_dir, dtype="float32")
        return self._model

    def prune(self, c: Candidate, val: Any = None):
        cfg = PruneConfig(**c.targets(), layer_metric=self.cfg.layer_metric, seed=self.cfg.seed)
        if c.num_layers == self.source.num_hidden_layers:
            cfg = cfg.model_copy(update={"num_layers": None})
        pruned, _ = prune_model(self.teacher(), self.scores, cfg, val)
        return pruned

    def zero_shot(self, ids: list[str], val_rows, rank_rows) -> None:
        """Each candidate's validation loss pruned from the scores, before any training
        (`rank_rows`: the text that ranks layer blocks for block_loss). Layer blocks are ranked
        in the CPU's native dtype as the prune stage ranks them (`native_autocast`), so a
        searched shape is pruned as a hand-picked one; the losses are computed so too."""
        it: Any = ids
        if self.progress:
            it = track(ids, "search: zero-shot loss", total=len(ids))
        for i in it:
            c = self.cands[i]
            k = self.source.num_hidden_layers - c.num_layers
            with native_autocast():
                if self.cfg.layer_metric == "block_loss" and k and loss_key(k) not in self.scores:
                    ranking = layer_loss_ranking(self.teacher(), rank_rows, (k,), micro_batch=8)
                    self.scores = {**self.scores, **ranking}
                pruned = self.prune(c)
                self.rows[i]["zero_shot_loss"] = evaluate_loss(pruned, val_rows, 8)["loss"]


def _scores_digest(scores: dict) -> str:
    """SHA-256 of the importance tensors' bytes (the scores a candidate is pruned from)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(scores):
        h.update(k.encode())
        h.update(scores[k].detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def candidate_key(
    search: Search,
    c: Candidate,
    distill: Any,
    train: Split,
    val: Split,
    env: dict[str, Any] | None = None,
    holdout: dict[str, Split] | None = None,
) -> str:
    """The search cache's key of one short distillation: what it is made from, and `env`
    (the code digest, library versions and compute dtypes, as in the artifact store's keys)."""

    return sha256_json(
        {
            "env": env or {},
            "teacher": search.source_cfg,
            "teacher_dir": str(search.teacher_dir),
            "scores": _scores_digest(search.scores),
            "targets": c.targets(),
            "layer_metric": search.cfg.layer_metric,
            "distill": distill.model_dump(mode="json"),
            "train": train.describe(),
            "val": val.describe(),
            **({"holdout": {k: v.describe() for k, v in holdout.items()}} if holdout else {}),
        }
    )[:24]


def run_search(
    teacher_dir: str | Path,
    scores: dict,
    cfg: SearchConfig,
    bench: BenchConfig | None,
    distill: DistillConfig,
    train: Split,
    val: Split,
    out: Path,
    cache: Path,
    *,
    progress: bool = True,
    log=print,
    cache_env: dict[str, Any] | None = None,
    holdout: dict[str, Split] | None = None,
) -> dict[str, Any]:
    """Run the search (`distill`: the settings of each short distillation, `cfg.steps` long);
    write `out/model` (the winner, pruned), `out/candidates.json`,
    `out/report.md` and `out/pareto.png`. Returns the summary. Finished short distillations
    are kept in `cache`, keyed by what they are made from and `cache_env` (code digest,
    library versions, compute dtypes).

    Raises:
        InputError: a bad grid, an engine that cannot run here, or a budget nobody meets.
    """

    t_start = time.perf_counter()
    teacher_dir = Path(teacher_dir)
    if cfg.budget.min_speedup is not None:
        if bench is None:
            raise InputError(
                "search.budget.min_speedup is measured on the profile's bench engine, and the "
                "profile has no bench section",
                fix="add a bench section (engine, isl_osl), or use max_params / max_memory_gb",
            )
        check_engine(bench)
    s = Search(teacher_dir, scores, cfg, bench, cache, progress=progress, log=log)
    s.enumerate()
    holdout = holdout or {}
    alive = [i for i, r in s.rows.items() if r["rejected"] is None]
    if cfg.budget.min_speedup is not None and alive:
        if cfg.speed[1] == "all":
            s.measure(alive)
        else:
            s.calibrate(s.calibration_ids(alive))
    pool = _zero_shot_set(s, [i for i in alive if s.possible(s.rows[i])], cfg.max_candidates)
    if not pool:
        raise s.no_candidate()
    val_rows = val.rows(cfg.val_samples, cfg.val_seq_len, seed=cfg.seed)
    rank_rows = val.rows(cfg.layer_val_samples, cfg.layer_val_seq_len, seed=cfg.seed)

    def rank(ids: list[str]) -> None:
        with s.timed("zero_shot", len(ids)):
            s.zero_shot(ids, val_rows, rank_rows)

    rank(pool)
    top = _finalists(s, pool, alive, rank)
    ranked = [i for i, r in s.rows.items() if r["zero_shot_loss"] is not None]  # pool + more
    n_feasible = sum(s.plausible(s.rows[i]) for i in alive)
    if not top:
        raise s.no_candidate()
    # the short distillations: `distill` is the searched variant's settings, search.steps long,
    # evaluated at the end only (see graph: eval_every 0; `_distil`: no evaluation before)
    with s.timed("short", len(top)):
        for i in top:
            _distil(s, i, distill, train, val, holdout, cache, cache_env, "reranked", progress)
    agreement = None
    longs = top
    if cfg.agreement_steps:
        # no checkpoint, as the short ones (graph): the cache is the resume
        long = distill.model_copy(update={"steps": cfg.agreement_steps}).without_checkpoints()
        best = min(s.rows[i]["reranked_score"] for i in top)
        margin = cfg.agreement_margin
        longs = [i for i in top if margin is None or s.rows[i]["reranked_score"] <= best + margin]
        with s.timed("long", len(longs)):
            for i in longs:
                _distil(s, i, long, train, val, holdout, cache, cache_env, "long", progress)
        agreement = {
            "steps": cfg.steps,
            "long_steps": cfg.agreement_steps,
            "n": len(longs),
            "kendall_tau": kendall_tau(
                [s.rows[i]["reranked_score"] for i in longs],
                [s.rows[i]["long_score"] for i in longs],
            )
            if len(longs) > 1
            else None,
            "same_winner": min(top, key=lambda i: s.rows[i]["reranked_score"])
            == min(longs, key=lambda i: s.rows[i]["long_score"]),
            "margin": margin,
            "behind": {i: s.rows[i]["reranked_score"] - best for i in top if i not in longs},
        }
    # the winner by the longest distillation run (the 4x longer one when measured)
    by = "long_score" if cfg.agreement_steps else "reranked_score"
    winner = min(longs, key=lambda i: s.rows[i][by])
    s.rows[winner]["chosen"] = True
    save_llama(
        s.prune(s.cands[winner]),
        out / "model",
        source=teacher_dir,
        dtype=s.source_cfg.get("torch_dtype") or "bfloat16",
    )
    if s.fit is not None:
        s.fit["validation"] = s.validation_errors()
        s.fit["unfitted_errors"] = s.unfitted_errors()
    rows = sorted(
        s.rows.values(),
        key=lambda r: (r["zero_shot_loss"] is None, r["zero_shot_loss"] or 0, -r["params"]),
    )

    summary = {
        "winner": s.rows[winner],
        "budget": cfg.budget.model_dump(),
        "candidates": len(s.rows),
        "feasible": n_feasible,  # meeting the budget (measured or predicted)
        "unmeasured_near_budget": s.in_band(),
        "zero_shot_evaluated": len(ranked),
        "reranked": top,
        "top_k": cfg.top_k,
        "families": {f: sum(r["family"] == f for r in s.rows.values()) for f in FAMILIES},
        "seeds": s.seed_ids,
        "ranked_by": by,
        "holdout_domains": sorted(holdout),
        "agreement": agreement,
        "cost_model": s.fit,
        "source": {"params": s.source.num_parameters},
        "phases": {k: {"seconds": round(v, 1), "n": s.counts[k]} for k, v in s.seconds.items()},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_json(out / "candidates.json", {"summary": summary, "rows": rows})
    atomic_write_text(out / "report.md", report_markdown(summary, rows))
    pareto_png(rows, cfg.budget.min_speedup, out / "pareto.png")
    return summary


def _zero_shot_set(s: Search, ids: list[str], limit: int) -> list[str]:
    """At most `limit` shapes to rank zero-shot: the largest of each family in turn (so no
    family is crowded out by another's larger shapes), and every seed shape."""
    by_fam = {
        f: sorted((i for i in ids if s.rows[i]["family"] == f), key=lambda i: -s.rows[i]["params"])
        for f in FAMILIES
    }
    out = [i for i in s.seed_ids if i in ids]
    while len(out) < limit and any(by_fam.values()):
        for f in FAMILIES:
            while by_fam[f] and by_fam[f][0] in out:
                by_fam[f].pop(0)
            if by_fam[f] and len(out) < limit:
                out.append(by_fam[f].pop(0))
    return out


def _finalists(
    s: Search,
    ids: list[str],
    alive: list[str] | None = None,
    rank: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """The best `top_k` of each family by zero-shot loss whose budget is confirmed (measured, with
    the gate's extra rounds, and counted by the interval's lower bound), plus every seed shape
    that meets it. The lists are walked in zero-shot order and each shape is measured when it is
    reached, before it is kept or dropped (in batches: the next of every family and the seeds
    share a run; the cost model is refitted after each); a shape below a confirmed one of its
    family is never measured (its speed cannot make it a finalist: the report counts those
    predicted near the budget); one a gated run leaves unconfirmed near the budget is measured
    once more in a run of its own (`retry`). When a family's ranked shapes all fall under the
    budget, its next largest shapes that could meet it (of `alive`) are ranked with `rank` and
    walked too. Measured shapes the gate's rounds could not confirm on this host (`confirmable`)
    are passed over without them."""
    k = s.cfg.top_k
    ranked = sorted(ids, key=lambda i: s.rows[i]["zero_shot_loss"])
    lists = {f: [i for i in ranked if s.rows[i]["family"] == f] for f in FAMILIES}
    pos = dict.fromkeys(FAMILIES, 0)
    seeds_seen = False
    while True:
        want: list[str] = []
        for f in FAMILIES:
            got = sum(s.confirmed(s.rows[i]) for i in lists[f][: pos[f]])
            if got < k and pos[f] >= len(lists[f]) and rank is not None:
                more = _more_of_family(s, f, alive or [], k - got)
                if more:  # the family's ranked shapes fell under: rank its next ones
                    rank(more)
                    lists[f] += sorted(more, key=lambda i: s.rows[i]["zero_shot_loss"])
            nxt = lists[f][pos[f] : pos[f] + max(0, k - got)]
            pos[f] += len(nxt)
            want += nxt
        if not seeds_seen:
            want += [i for i in s.seed_ids if i in ids and i not in want]
            seeds_seen = True
        if not want:
            break
        # measured, and no rounds could confirm it here: not measured again (a seed to
        # `recheck` is measured again in a run of its own first)
        fresh = frozenset(i for i in want if s.recheck(s.rows[i]))
        for i in fresh:
            s.rows[i]["again"] = "seed measured under the budget only without the gate"
        for i in set(want) - fresh:
            if not s.settled(i) and s.rows[i]["measured"] and not s.confirmable(s.rows[i]):
                s.rows[i]["unconfirmable"] = True
        todo = [i for i in want if not s.settled(i)]
        if todo:
            s.measure(todo, finalists=True, fresh=fresh)
            again = [i for i in todo if s.retry(s.rows[i])]
            if again:
                s.log(f"search: {len(again)} shape(s) near the budget measured again")
                for i in again:
                    s.rows[i]["again"] = "one gated run left it unconfirmed near the budget"
                s.measure(again, finalists=True, fresh=frozenset(again))
            s.refit()
    top = []
    for f in FAMILIES:
        top += [i for i in lists[f][: pos[f]] if s.confirmed(s.rows[i])][:k]
    return top + [i for i in s.seed_ids if i in ids and s.confirmed(s.rows[i]) and i not in top]


def _more_of_family(s: Search, fam: str, alive: list[str], n: int) -> list[str]:
    """The `n` largest shapes of family `fam` not ranked yet that could meet the budget."""
    pool = [
        i
        for i in alive
        if s.rows[i]["family"] == fam
        and s.rows[i]["zero_shot_loss"] is None
        and s.possible(s.rows[i])
    ]
    return sorted(pool, key=lambda i: -s.rows[i]["params"])[:n]


def _distil(s, i, distill, train, val, holdout, cache, cache_env, kind, progress) -> None:
    """One distillation of candidate `i` (kept in `cache`); sets its `kind`_score (the mean of
    the validation and held-out losses, `rank.combined_loss`)."""
    from minitron_deploy.distill import run_distillation

    c = s.cands[i]
    d = cache / "candidates" / candidate_key(s, c, distill, train, val, cache_env, holdout)
    summary = d / "kd" / "summary.json"
    what, steps = ("short", s.cfg.steps) if kind == "reranked" else ("long", distill.steps)
    if not summary.is_file():
        s.log(f"search: {what} distillation of {i} ({steps} steps)")
        save_llama(s.prune(c), d / "pruned", source=s.teacher_dir, dtype="float32", overwrite=True)
        run_distillation(
            s.teacher_dir,
            d / "pruned",
            d / "kd",
            distill,
            train_data=train,
            val_data=val,
            holdout=holdout,
            resume=True,
            progress=progress,
            title=f"search {i}",
            final_checkpoint=False,
            evaluate_start=False,  # the search reads only the end
        )
    else:
        s.log(f"search: {i} reused from {d}")
    res = json.loads(summary.read_text())
    held = {k: res[f"holdout_{k}_loss_after"] for k in holdout}
    score = combined_loss(res["val_loss_after"], held)
    if kind == "reranked":
        s.rows[i].update(reranked_loss=res["val_loss_after"], reranked_holdout=held)
        s.rows[i]["reranked_score"] = score
    else:
        s.rows[i].update(long_loss=res["val_loss_after"], long_holdout=held, long_score=score)
    for bulky in (d / "pruned", d / "kd" / "checkpoints", d / "kd" / "final"):
        shutil.rmtree(bulky, ignore_errors=True)  # the summary is what a rerun reuses
