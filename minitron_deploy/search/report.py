"""The search's report: a table of every candidate and a PNG of loss against speedup."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def _f(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _again(r: dict[str, Any]) -> str:
    """The note of a shape measured again in a run of its own: why, and what the run it
    replaced measured."""
    text = f"measured again in a run of its own ({r.get('again', 'seed')}"
    for e in r.get("earlier", []):
        text += f"; before: {e['speedup']:.2f}x [{e['speedup_lo']:.2f}, {e['speedup_hi']:.2f}]"
    return text + ")"


def _err(e: dict[str, Any] | None) -> str:
    if not e or not e.get("n"):
        return "none"
    return f"median {e['median']:.1%}, max {e['max']:.1%} over {e['n']} shapes"


def _cost_model_lines(fit: dict[str, Any], near: int | None = None) -> list[str]:
    if "features" not in fit:  # a record from before the per-family cost model
        return [
            f"Speedups marked *predicted* come from a cost model fitted to {fit['shapes']} "
            f"measured shapes: speedup = e^{fit['a']:.3f} x ideal^{fit['b']:.3f}.",
            "",
        ]
    val = fit.get("validation") or {}
    calib = fit.get("calibration") or fit["fitted_on"]  # records before refits: one fit
    beyond = fit.get("leave_one_out_beyond_interval")
    errs = sorted(fit.get("unfitted_errors") or [])
    pooled = {"n": len(errs), "median": statistics.median(errs) if errs else None,
              "max": max(errs) if errs else None}  # fmt: skip
    return [
        "Speedups marked *predicted* come from the cost model (`minitron_deploy/search/cost.py`): "
        "per ISL/OSL pair, a generation's time over the source's is a non-negative sum of "
        "attention-projection, FFN, attention-over-context and lm-head terms (weights x "
        "tokens), a per-layer fixed overhead x layers and a per-call constant, fitted by "
        f"non-negative least squares on relative error to {len(calib)} measured shapes "
        f"chosen to span the families ({', '.join(calib)})"
        + (
            f", then refitted on every shape measured since ({fit['shapes']} shapes in the "
            f"last of {fit['fits']} fits; each shape's prediction below is the one it had "
            "before it was measured)."
            if fit.get("fits", 1) > 1
            else "."
        ),
        "",
        "- Validation, leave-one-out on the last fit's shapes: |relative error| to the measured "
        "median: "
        f"{_err(fit['leave_one_out'])}"
        + (f"; beyond the measured interval: {_err(beyond)}." if beyond else "."),
        f"- Validation on shapes measured after the calibration fit (against the prediction "
        f"made before measuring each): {_err(val)}"
        + (
            f"; beyond the measured interval: {_err(val['beyond_interval'])}."
            if val.get("beyond_interval")
            else "."
        ),
        "- Pooled, every prediction of a shape the model was not fitted on (the calibration "
        f"shapes' leave-one-out ones and the validation's): {_err(pooled)}.",
        *(
            [
                "- Calibration shapes whose leave-one-out prediction missed their first run's "
                f"median by more than {fit['outlier']:.0%}, measured again in a run of their own "
                f"before the model was used (the table's notes give both runs): "
                f"{', '.join(fit['measured_again'])}."
            ]
            if fit.get("measured_again")
            else []
        ),
        f"- Shapes predicted above the budget or within {fit['band']:.1%} of it (the "
        "leave-one-out "
        + ("max error beyond the measured intervals" if beyond else "max error")
        + ", at least 3%) were ranked by zero-shot loss; each family's list was walked in that "
        "order and every shape measured with the gate when reached, before it was kept or "
        "dropped"
        + (
            f" ({near} predicted that near the budget were never measured: below a confirmed "
            "shape of their family, or not ranked, so their speed could not make them finalists)"
            if near
            else ""
        )
        + "; a measured candidate meets `min_speedup` only when its interval's lower bound does.",
        "",
    ]


_PHASES = {  # phase -> what it did ({n}: its items)
    "measure": "measuring speed ({n} shapes, finalists' re-measurements included)",
    "zero_shot": "zero-shot loss ({n} candidates, layer-block ranking included)",
    "short": "short distillations ({n})",
    "long": "agreement distillations ({n})",
}


def _time_line(summary: dict[str, Any]) -> str:
    """Where the search's wall time went (this run; cached distillations cost ~0)."""
    ph, total = summary["phases"], summary["seconds"]
    parts = [f"{_PHASES[k].format(n=v['n'])} {v['seconds'] / 60:.1f} min" for k, v in ph.items()]
    rest = max(0.0, total - sum(v["seconds"] for v in ph.values()))  # each rounded to 0.1 s
    parts.append(f"the rest (pruning the winner, fitting, writing) {rest / 60:.1f} min")
    return f"Time: {total / 60:.1f} min in all: " + "; ".join(parts) + "."


def _seed_status(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Each seed shape and why it was or was not re-ranked (its measured interval)."""
    by_id = {r["id"]: r for r in rows}
    out = []
    for i in summary.get("seeds") or []:
        r = by_id.get(i)
        if r is None:
            continue
        sp = (
            f"{_f(r['speedup'], '.2f')}x [{_f(r['speedup_lo'], '.2f')}, "
            f"{_f(r['speedup_hi'], '.2f')}]"
            if r.get("measured")
            else f"{_f(r['speedup'], '.2f')}x predicted"
        )
        if i in (summary.get("reranked") or []):
            why = "re-ranked"
        elif r.get("rejected"):
            why = f"rejected ({r['rejected']})"
        elif (
            r.get("measured")
            and r.get("speedup_hi") is not None
            and r.get("speedup_lo") is not None
        ):
            ms = (summary.get("budget") or {}).get("min_speedup")
            if ms is not None and r["speedup_lo"] < ms <= r["speedup_hi"]:
                why = "its interval straddles the budget after the gate's rounds: not confirmed"
            else:
                why = "under the budget"
        else:
            why = "not measured"
        out.append(f"{i} ({sp}: {why})")
    return "; ".join(out) or "none"


def report_markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    w = summary["winner"]
    b = {k: v for k, v in summary["budget"].items() if v is not None}
    fit = summary.get("cost_model")
    fams = summary.get("families")
    held = summary.get("holdout_domains") or []
    lines = [
        "# Architecture search",
        "",
        f"Budget: {', '.join(f'{k} {v}' for k, v in b.items())}. "
        f"{summary['candidates']} candidates"
        + (f" ({', '.join(f'{v} {k}' for k, v in fams.items())})" if fams else "")
        + (
            f", {summary['feasible']} could meet it (measured, or predicted clear of it by more "
            "than the cost model's error; "
            if fams
            else f", {summary['feasible']} meet it (measured or predicted; "
        )
        + f"the {summary['zero_shot_evaluated']} ranked by zero-shot loss), "
        f"{len(summary['reranked'])} re-ranked after a short distillation.",
        "",
        f"Winner: **{w['id']}** ({w['params'] / 1e6:.1f}M params, speedup "
        f"{_f(w['speedup'], '.2f')}x {'measured' if w['measured'] else 'predicted'}, "
        f"zero-shot loss {_f(w['zero_shot_loss'])}, after the short distillation "
        f"{_f(w['reranked_loss'])}).",
        "",
    ]
    if fams:
        lines += [
            "Re-rank: the best "
            + (f"{summary['top_k']}" if summary.get("top_k") else "few")
            + " of each family (depth-only, width-only, mixed) by zero-shot loss whose budget is "
            "confirmed, plus the seed recipe's shapes that meet it: "
            f"{', '.join(summary.get('reranked') or []) or 'none'}. Seed shapes: "
            f"{_seed_status(summary, rows)}. Each is scored by the mean "
            "of its validation loss and "
            + (f"its held-out loss on {', '.join(held)}" if held else "(no held-out domain)")
            + " after distillation (the *score* column); lowest wins"
            + (" - by the longer distillation" if summary.get("ranked_by") == "long_score" else "")
            + ".",
            "",
        ]
    if summary.get("phases"):
        lines += [_time_line(summary), ""]
    ag = summary.get("agreement")
    if ag:
        tau = "-" if ag["kendall_tau"] is None else f"{ag['kendall_tau']:.2f}"
        behind = ag.get("behind") or {}
        skipped = (
            f" Not distilled longer, more than {ag['margin']:g} nat behind the best after "
            f"{ag['steps']} steps (they cannot win): "
            + ", ".join(f"{i} (+{d:.2f})" for i, d in behind.items())
            + "."
            if behind
            else ""
        )
        lines += [
            f"Agreement of the {ag['steps']}-step re-rank with a {ag['long_steps']}-step "
            f"distillation of the same {ag['n']} candidates: Kendall tau **{tau}**; "
            f"same winner: {'yes' if ag['same_winner'] else 'no'}.{skipped}",
            "",
        ]
    if fit:
        lines += _cost_model_lines(fit, summary.get("unmeasured_near_budget"))
    lines += [
        "| candidate | family | hidden | FFN | heads x KV | layers | params (M) | speedup | "
        "zero-shot loss | re-ranked loss | score | long score | chosen | note |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: "
        "| --- | --- |",
    ]
    lines[-2:-2] = (
        []
        if all(r.get("speedup_lo") is None for r in rows)
        else [
            "Measured speedups: the slowest ISL/OSL pair's median of per-round ratios with its "
            "interval [lo, hi] (95% from 6 rounds on; with fewer, the range of the rounds), and "
            "the cost model's prediction made before the measurement (*pred*).",
            "",
        ]
    )
    for r in rows:
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x "
        if r["speedup"] is not None and r["measured"] and r.get("speedup_lo") is not None:
            sp += f"[{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}] measured"
            if r.get("predicted_speedup"):
                sp += f" (pred {r['predicted_speedup']:.2f}x)"
        elif r["speedup"] is not None:
            sp += "measured" if r["measured"] else "predicted"
        note = "; ".join(
            text
            for text, on in (
                (f"over {r['rejected']}", r["rejected"]),
                ("seed recipe", r.get("seed")),
                (_again(r), r.get("rechecked")),
                ("too close to the budget to confirm here", r.get("unconfirmable")),
            )
            if on
        )
        lines.append(
            f"| {r['id']} | {r.get('family', '-')} | {r['hidden_size']} | "
            f"{r['intermediate_size']} | "
            f"{r['num_attention_heads']}x{r['num_key_value_heads']} | {r['num_layers']} | "
            f"{r['params'] / 1e6:.1f} | {sp} | {_f(r['zero_shot_loss'])} | "
            f"{_f(r['reranked_loss'])} | {_f(r.get('reranked_score'))} | "
            f"{_f(r.get('long_score'))} | {'**yes**' if r['chosen'] else ''} | {note} |"
        )
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats in both speedup (higher) and loss (lower), by speedup."""
    front = []
    for sp, loss in sorted(points, key=lambda p: (-p[0], p[1])):
        if not front or loss < front[-1][1]:
            front.append((sp, loss))
    return sorted(front)


def pareto_png(rows: list[dict[str, Any]], min_speedup: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    pts = [r for r in rows if r["zero_shot_loss"] is not None and r["speedup"] is not None]
    for measured, marker, label in ((True, "o", "measured speedup"), (False, "x", "predicted")):
        sel = [r for r in pts if r["measured"] == measured]
        if sel:
            ax.scatter(
                [r["speedup"] for r in sel],
                [r["zero_shot_loss"] for r in sel],
                marker=marker,
                label=f"zero-shot loss ({label})",
                alpha=0.7,
            )
    rer = [r for r in pts if r["reranked_loss"] is not None]
    if rer:
        ax.scatter(
            [r["speedup"] for r in rer],
            [r["reranked_loss"] for r in rer],
            marker="s",
            color="tab:green",
            label="after the short distillation",
        )
    front = pareto_front([(r["speedup"], r["zero_shot_loss"]) for r in pts])
    if front:
        ax.plot(*zip(*front, strict=True), "--", color="gray", label="Pareto front (zero-shot)")
    win = [r for r in pts if r["chosen"]]
    for r in win:
        y = r["reranked_loss"] or r["zero_shot_loss"]
        ax.scatter(
            [r["speedup"]],
            [y],
            s=200,
            facecolors="none",
            edgecolors="red",
            label=f"chosen: {r['id']}",
        )
    if min_speedup is not None:
        ax.axvline(min_speedup, color="red", linestyle=":", label=f"budget: {min_speedup}x")
    ax.set_xlabel("speedup over the source (output tokens/s)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Architecture search: loss against speedup")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
