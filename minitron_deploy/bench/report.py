"""Reports of a throughput matrix: results.json, report.md and PNG bar charts.

The charts follow the blog's Figures 7/8: for each engine/dtype, grouped bars of output tokens/s
per ISL/OSL pair (one bar per model, speedup vs the base written on each bar), and a second chart
of measured speedup next to the compute-ratio ideal.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from minitron_deploy.fsutil import atomic_dir, atomic_write_json, atomic_write_text

IDEAL_NOTE = (
    "ideal = FLOPs of one base request / FLOPs of one variant request (ISL prompt + OSL "
    "output tokens, attention included; compute-bound ideal). ideal_mem = batch ratio x "
    "weight-bytes ratio (memory-bound decode ideal)."
)


def _fmt(x: Any, nd: int = 2) -> str:
    return "–" if x is None else f"{x:,.{nd}f}"


def _machine(results: dict[str, Any]) -> str:
    proc = results.get("processor") or {}
    text = proc.get("summary", "unrecorded processor")
    return text + (f"; GPU: {results['gpu']}" if results.get("gpu") else "")


def _iv(r: dict[str, Any], key: str, nd: int, unit: str = "") -> str:
    """'1.87x [1.80, 1.95]' from a row's key and key_lo/key_hi (point only in older results)."""
    x, lo, hi = r.get(key), r.get(f"{key}_lo"), r.get(f"{key}_hi")
    if key == "speedup_vs_base":
        lo, hi = r.get("speedup_lo"), r.get("speedup_hi")
    if x is None:
        return "–"
    if lo is None or hi is None:
        return f"{_fmt(x, nd)}{unit}"
    return f"{_fmt(x, nd)}{unit} [{_fmt(lo, nd)}, {_fmt(hi, nd)}]"


def markdown(results: dict[str, Any]) -> str:
    """A markdown table: req/s, output tok/s, speedup vs base beside the ideals, with the 95%
    intervals and the spread."""
    rows = results["results"]
    covs = sorted(
        {round(100 * r["interval_coverage"], 1) for r in rows if r.get("interval_coverage")}
    )
    reps = sorted({r["repeats"] for r in rows})
    lines = [
        "# Throughput matrix",
        "",
        "Every request yields exactly OSL tokens (EOS ignored). Medians of "
        f"{'/'.join(map(str, reps)) or 0} interleaved repeats with their order-statistic interval "
        "[lo, hi] in brackets (speedup: the median of per-round ratios to the base's rounds "
        "before and after each, and the "
        "interval of those ratios); the interval's real coverage is "
        f"{'/'.join(f'{c}%' for c in covs) or 'unrecorded'} (95% needs at least 6 repeats; with "
        "fewer the interval is [min, max]). spread = (max - min) / median of request/s.",
        "",
        f"Measured on: {_machine(results)}.",
        "",
        "| model | engine | weights | ISL/OSL | batch | req/s | output tok/s | speedup | ideal "
        "| ideal_mem | spread |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['engine']} | {r.get('weights') or r.get('dtype')} "
            f"| {r['isl']}/{r['osl']} | {r['batch']} | {_iv(r, 'req_s', 3)} "
            f"| {_iv(r, 'output_tok_s', 1)} | {_iv(r, 'speedup_vs_base', 2, 'x')} "
            f"| {_fmt(r.get('ideal_speedup'))}x | {_fmt(r.get('ideal_speedup_memory'))}x "
            f"| {_fmt(100 * r['spread'] if r.get('spread') is not None else None, 0)}% |"
        )
    lines += ["", IDEAL_NOTE, ""]
    engines = results.get("engines") or {}
    if engines:
        lines += ["## Engines", ""]
        for name, d in engines.items():
            opts = ", ".join(
                f"{k}={v}" for k, v in d.items() if k not in ("shape", "model_dir") and v
            )
            lines.append(f"- **{name}**: {opts}")
        lines.append("")
    return "\n".join(lines)


def _errors(rows: list[dict[str, Any]], key: str) -> list[list[float]] | None:
    """Asymmetric error bars [[below...], [above...]] from the rows' intervals (None: none)."""
    point = "speedup_vs_base" if key == "speedup" else key
    lo = [r.get(f"{key}_lo") for r in rows]
    hi = [r.get(f"{key}_hi") for r in rows]
    if any(x is None for x in lo + hi):
        return None
    mid = [r.get(point) or 0 for r in rows]
    return [
        [max(m - a, 0.0) for m, a in zip(mid, lo, strict=True)],
        [max(b - m, 0.0) for m, b in zip(mid, hi, strict=True)],
    ]


def plot(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """One PNG per (engine, weights): throughput bars and speedup vs ideal; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in results["results"]:
        groups[(r["engine"], str(r.get("weights") or r.get("dtype")))].append(r)
    paths = []
    for (engine, weights), rows in groups.items():
        pairs = sorted({(r["isl"], r["osl"]) for r in rows})
        models = list(dict.fromkeys(r["model"] for r in rows))
        by = {(r["model"], r["isl"], r["osl"]): r for r in rows}
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6 + 2 * len(pairs), 4.5))
        width = 0.8 / max(1, len(models))
        for j, m in enumerate(models):
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(pairs))]
            vals = [by.get((m, *p), {}).get("output_tok_s") or 0 for p in pairs]
            batch = next(r["batch"] for r in rows if r["model"] == m)
            err = _errors([by.get((m, *p), {}) for p in pairs], "output_tok_s")
            ax1.bar(xs, vals, width, yerr=err, capsize=3, label=f"{m} (batch {batch})")
            for x, p, v in zip(xs, pairs, vals, strict=True):
                s = by.get((m, *p), {}).get("speedup_vs_base")
                if s is not None and v:
                    ax1.annotate(f"{s:.2f}x", (x, v), ha="center", va="bottom", fontsize=7)
            sp = [by.get((m, *p), {}).get("speedup_vs_base") or 0 for p in pairs]
            ideal = [by.get((m, *p), {}).get("ideal_speedup") or 0 for p in pairs]
            err = _errors([by.get((m, *p), {}) for p in pairs], "speedup")
            ax2.bar(xs, sp, width, yerr=err, capsize=3, label=f"{m} measured")
            ax2.scatter(xs, ideal, marker="_", s=300, color="black", zorder=3)
        labels = [f"{i}/{o}" for i, o in pairs]
        for ax in (ax1, ax2):
            ax.set_xticks(range(len(pairs)), labels)
            ax.set_xlabel("ISL / OSL")
        ax1.set_ylabel("output tokens / s")
        ax1.set_title(f"Throughput ({engine}, {weights})")
        ax1.legend(fontsize=8)
        ax2.set_ylabel("speedup vs base")
        ax2.set_title("Measured (bars, 95% interval) vs compute ideal (—)")
        ax2.axhline(1.0, color="grey", lw=0.8)
        fig.tight_layout()
        path = Path(out_dir) / f"throughput_{engine}_{weights}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_reports(
    results: dict[str, Any], out_dir: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Write results.json, report.md and PNG charts into `out_dir`, atomically.

    Args:
        results: what `run_matrix` returned.
        out_dir: new (or, with `overwrite`, replaced) folder.

    Returns:
        The written files, under their final `out_dir` paths.
    """

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "results.json", results)
        atomic_write_text(tmp / "report.md", markdown(results))
        pngs = plot(results, tmp)
        names = ["results.json", "report.md", *(p.name for p in pngs)]
    return [Path(out_dir) / n for n in names]
