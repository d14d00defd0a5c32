"""Architecture search under a measured budget (P1's search, against the user's engine).

1. Enumerate the grid (`candidates.py`); drop shapes over `max_params` / `max_memory_gb`.
2. `min_speedup`: measure candidates on the profile's bench engine with random weights of their
   shape (speed does not depend on the values), the source at `batch[0]` and each candidate at
   `batch[1]`, at every ISL/OSL pair (the lowest speedup counts). With `measure: model`, a few
   shapes spread over the compute-ideal range are measured, log(speedup) is fitted against
   log(ideal speedup), the rest is predicted, and finalists are measured before they count.
3. Rank the feasible shapes by zero-shot validation loss, each pruned from the same importance
   scores; distill the best `top_k` for `steps` steps (same data and seed for all; finished
   candidates are kept in a cache shared by runs, so a larger `top_k` reuses them) and re-rank
   by validation loss.
4. The winner (pruned, before the short distillation) is the stage's model; the report lists
   every candidate and draws loss against speedup with the budget line and the Pareto front.
"""

from __future__ import annotations

import json
import math
import shutil
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
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import llama_config, load_llama, read_config, save_llama
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.search.candidates import (
    Candidate,
    enumerate_candidates,
    ideal_speedup,
    memory_gb,
)
from minitron_deploy.search.report import pareto_png, report_markdown

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
        self.fit: dict[str, float] | None = None
        self._model = None

    # ------------------------------------------------------------------ budget
    def context(self) -> int:
        pairs = self.bench.pairs() if self.bench is not None else [(128, 128)]
        return max(i + o for i, o in pairs)

    def enumerate(self) -> list[Candidate]:
        b = self.cfg.budget
        cands = enumerate_candidates(self.source, self.cfg)
        ctx = self.context()
        bpv = _bytes_per_value(self.bench) if self.bench is not None else 2
        for c in cands:
            shape = c.shape(self.source)
            row = {
                "id": c.id,
                **c.targets(),
                "params": shape.num_parameters,
                "memory_gb": memory_gb(shape, self.batch[1], ctx, bpv),
                "ideal_speedup": ideal_speedup(self.source, shape, ctx // 2),
                "speedup": None,
                "speedup_lo": None,
                "speedup_hi": None,
                "measured": False,
                "zero_shot_loss": None,
                "reranked_loss": None,
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
        torch.manual_seed(0)
        model = LlamaForCausalLM(llama_config(cfg))
        save_llama(
            model,
            out,
            source=self.teacher_dir,
            dtype=self.source_cfg.get("torch_dtype") or "bfloat16",
            overwrite=True,
        )
        return out

    def measure(self, ids: list[str], finalists: bool = False) -> None:
        """Measured speedups of candidates (the source measured in the same matrix run): the
        slowest ISL/OSL pair's median and 95% interval. Finalists are measured with the budget
        as a speedup gate, so rounds are added while an interval straddles it."""

        ids = [i for i in ids if not self.rows[i]["measured"]]
        if not ids:
            return
        self.log(f"search: measuring {len(ids)} shape(s) on {self.bench.engine}")
        models = [("source", self.teacher_dir)]
        models += [(i, self._random_model(self.cands[i])) for i in ids]
        (b0, b1), _, _ = self.cfg.speed
        batch = (b0, *([b1] * len(ids)))
        bench = self.bench.model_copy(update={"batch": batch})
        ms = self.cfg.budget.min_speedup
        gate = {i: ms for i in ids} if finalists and ms is not None else None
        res = run_matrix(models, bench, progress=self.progress, gate=gate)
        for i in ids:
            mine = [r for r in res["results"] if r["model"] == i]
            worst = min(mine, key=lambda r: r["speedup_vs_base"])
            self.rows[i].update(
                speedup=worst["speedup_vs_base"],
                speedup_lo=min(r["speedup_lo"] for r in mine),
                speedup_hi=worst["speedup_hi"],
                measured=True,
            )

    def fit_cost_model(self, ids: list[str]) -> None:
        """Fit log(speedup) = a + b log(ideal) on measured shapes; predict the others."""
        pts = [
            (math.log(self.rows[i]["ideal_speedup"]), math.log(self.rows[i]["speedup"]))
            for i in ids
            if self.rows[i]["measured"] and self.rows[i]["speedup"] > 0
        ]
        n = len(pts)
        mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        b = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 1e-12 else 1.0
        a = my - b * mx
        self.fit = {"a": a, "b": b, "shapes": n}
        for r in self.rows.values():
            if not r["measured"]:
                r["speedup"] = math.exp(a + b * math.log(r["ideal_speedup"]))

    def calibration_ids(self, ids: list[str]) -> list[str]:
        """Shapes spread evenly over the ideal-speedup range."""
        order = sorted(ids, key=lambda i: self.rows[i]["ideal_speedup"])
        k = min(self.cfg.speed[2], len(order))
        if k <= 1:
            return order[:k]
        return sorted({order[round(j * (len(order) - 1) / (k - 1))] for j in range(k)})

    def feasible(self, row: dict[str, Any]) -> bool:
        """Within the budget: a measured speedup counts by its interval's lower bound (a budget
        met by noise is not met), a predicted one by the cost model's value."""
        ms = self.cfg.budget.min_speedup
        speed = row["speedup_lo"] if row["measured"] else row["speedup"]
        return row["rejected"] is None and (ms is None or (speed or 0) >= ms)

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

    def zero_shot(self, ids: list[str], val_rows) -> None:
        it: Any = ids
        if self.progress:
            it = track(ids, "search: zero-shot loss", total=len(ids))
        for i in it:
            c = self.cands[i]
            k = self.source.num_hidden_layers - c.num_layers
            if self.cfg.layer_metric == "block_loss" and k and loss_key(k) not in self.scores:
                self.scores = {
                    **self.scores,
                    **layer_loss_ranking(self.teacher(), val_rows, (k,), micro_batch=8),
                }
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
) -> dict[str, Any]:
    """Run the search (`distill`: the settings of each short distillation, `cfg.steps` long);
    write `out/model` (the winner, pruned), `out/candidates.json`,
    `out/report.md` and `out/pareto.png`. Returns the summary. Finished short distillations
    are kept in `cache`, keyed by what they are made from and `cache_env` (code digest,
    library versions, compute dtypes).

    Raises:
        InputError: a bad grid, an engine that cannot run here, or a budget nobody meets.
    """
    from minitron_deploy.distill import run_distillation

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
    alive = [i for i, r in s.rows.items() if r["rejected"] is None]
    if cfg.budget.min_speedup is not None and alive:
        if cfg.speed[1] == "all":
            s.measure(alive)
        else:
            calib = s.calibration_ids(alive)
            s.measure(calib)
            s.fit_cost_model(calib)
    feasible = [i for i in alive if s.feasible(s.rows[i])]
    if not feasible:
        raise s.no_candidate()
    n_feasible = len(feasible)
    feasible = sorted(feasible, key=lambda i: -s.rows[i]["params"])[: cfg.max_candidates]
    val_rows = val.rows(cfg.val_samples, cfg.val_seq_len, seed=cfg.seed)
    s.zero_shot(feasible, val_rows)
    ranked = sorted(feasible, key=lambda i: s.rows[i]["zero_shot_loss"])
    # finalists: the best by zero-shot loss whose speed is measured to meet the budget
    top: list[str] = []
    pos = 0
    while len(top) < cfg.top_k and pos < len(ranked):
        batch = ranked[pos : pos + cfg.top_k - len(top)]
        pos += len(batch)
        if cfg.budget.min_speedup is not None:
            s.measure(batch, finalists=True)
        top += [i for i in batch if s.feasible(s.rows[i])]
    if not top:
        raise s.no_candidate()
    short = distill  # the short distillations' settings (steps = search.steps; see graph)
    for i in top:
        c = s.cands[i]
        d = cache / "candidates" / candidate_key(s, c, short, train, val, cache_env)
        summary = d / "kd" / "summary.json"
        if not summary.is_file():
            log(f"search: short distillation of {i} ({cfg.steps} steps)")
            save_llama(
                s.prune(c), d / "pruned", source=teacher_dir, dtype="float32", overwrite=True
            )
            run_distillation(
                teacher_dir,
                d / "pruned",
                d / "kd",
                short,
                train_data=train,
                val_data=val,
                resume=True,
                progress=progress,
                title=f"search {i}",
                final_checkpoint=False,
            )
        else:
            log(f"search: {i} reused from {d}")
        s.rows[i]["reranked_loss"] = json.loads(summary.read_text())["val_loss_after"]
        for bulky in (d / "pruned", d / "kd" / "checkpoints", d / "kd" / "final"):
            shutil.rmtree(bulky, ignore_errors=True)  # the summary is what a rerun reuses
    winner = min(top, key=lambda i: s.rows[i]["reranked_loss"])
    s.rows[winner]["chosen"] = True
    save_llama(
        s.prune(s.cands[winner]),
        out / "model",
        source=teacher_dir,
        dtype=s.source_cfg.get("torch_dtype") or "bfloat16",
    )
    rows = sorted(
        s.rows.values(),
        key=lambda r: (r["zero_shot_loss"] is None, r["zero_shot_loss"] or 0, -r["params"]),
    )

    summary = {
        "winner": s.rows[winner],
        "budget": cfg.budget.model_dump(),
        "candidates": len(s.rows),
        "feasible": n_feasible,  # meeting the budget (measured or predicted)
        "zero_shot_evaluated": len(feasible),
        "reranked": top,
        "cost_model": s.fit,
        "source": {"params": s.source.num_parameters},
    }
    atomic_write_json(out / "candidates.json", {"summary": summary, "rows": rows})
    atomic_write_text(out / "report.md", report_markdown(summary, rows))
    pareto_png(rows, cfg.budget.min_speedup, out / "pareto.png")
    return summary
