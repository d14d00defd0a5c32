"""The speedup gate: one decision for the pipeline's `gate` and `examples/ci/speedup_gate.py`.

Every bench row carries its speedup over the base with an interval (`speedup_lo`, `speedup_hi`:
the order-statistic interval of the median of per-round ratios, `speedup_coverage` its real
coverage; see `minitron_deploy.stats`). For each gated variant and ISL/OSL cell:

- pass: the interval is a real >= 95% one and its lower bound clears the threshold;
- fail: the interval is a real >= 95% one and its upper bound is below the threshold;
- inconclusive: otherwise (the interval straddles the threshold, or too few repeats for 95%).

A variant passes when all its cells pass; the gate fails when any cell fails or a variant has no
rows, and is otherwise inconclusive when any cell is. Exit codes (`EXIT`): 0 pass, 1 fail,
3 inconclusive (2 stays "bad input"). The bench stage adds interleaved rounds, up to
`bench.gate_max_repeats`, for the variants with a gated cell still inconclusive
(`open_cells`). Standard library only.
"""

from __future__ import annotations

from typing import Any

from minitron_deploy.stats import LEVEL

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
EXIT = {PASS: 0, FAIL: 1, INCONCLUSIVE: 3}
INCONCLUSIVE_PREFIX = "speedup gate inconclusive"  # how the pipeline's gate marks those cells


def cell_outcome(row: dict[str, Any], limit: float, level: float = LEVEL) -> str:
    """pass / fail / inconclusive for one bench row against `limit`."""
    lo, hi, cov = row.get("speedup_lo"), row.get("speedup_hi"), row.get("speedup_coverage")
    if not all(isinstance(x, int | float) for x in (lo, hi, cov)) or cov < level:
        return INCONCLUSIVE
    if lo >= limit:
        return PASS
    if hi < limit:
        return FAIL
    return INCONCLUSIVE


def evaluate(
    rows: list[dict[str, Any]], limits: dict[str, float], level: float = LEVEL
) -> dict[str, Any]:
    """The gate over every row of every gated variant.

    Returns:
        {"outcome": pass|fail|inconclusive, "passed": bool, "checks": [...], "failures": [...],
        "inconclusive": [...]}; each check has variant, isl_osl, speedup, lo, hi, coverage,
        repeats, min and outcome.
    """
    checks, failures, unsure = [], [], []
    for name, limit in sorted(limits.items()):
        mine = [r for r in rows if r.get("model") == name]
        if not mine:
            failures.append(f"{name}: no bench results (gate {limit}x)")
        for r in mine:
            out = cell_outcome(r, limit, level)
            cell = f"{r.get('isl')}/{r.get('osl')}"
            check = {
                "variant": name,
                "isl_osl": cell,
                "speedup": r.get("speedup_vs_base"),
                "lo": r.get("speedup_lo"),
                "hi": r.get("speedup_hi"),
                "coverage": r.get("speedup_coverage"),
                "repeats": r.get("repeats"),
                "min": limit,
                "outcome": out,
            }
            checks.append(check)
            text = f"{name} at ISL/OSL {cell}: {describe(check)}"
            if out == FAIL:
                failures.append(text)
            elif out == INCONCLUSIVE:
                unsure.append(text)
    outcome = FAIL if failures else INCONCLUSIVE if unsure else PASS
    return {
        "outcome": outcome,
        "passed": outcome == PASS,
        "checks": checks,
        "failures": failures,
        "inconclusive": unsure,
    }


def describe(c: dict[str, Any]) -> str:
    """'speedup 1.87x [1.80, 1.95] (96.9%, 6 repeats) vs min 1.8x: pass'."""
    s, lo, hi, cov = c["speedup"], c["lo"], c["hi"], c["coverage"]
    if not isinstance(s, int | float):
        return f"no speedup vs min {c['min']}x: {c['outcome']}"
    iv = f" [{lo:.2f}, {hi:.2f}]" if isinstance(lo, int | float) else " (no interval)"
    cv = f"{100 * cov:.1f}%, " if isinstance(cov, int | float) else ""
    return f"speedup {s:.2f}x{iv} ({cv}{c['repeats']} repeats) vs min {c['min']}x: {c['outcome']}"


def open_cells(rows: list[dict[str, Any]], limits: dict[str, float]) -> set[str]:
    """The gated variants with a cell among `rows` still inconclusive (more rounds may settle
    it)."""
    return {
        r["model"]
        for r in rows
        if r["model"] in limits and cell_outcome(r, limits[r["model"]]) == INCONCLUSIVE
    }


def markdown(result: dict[str, Any]) -> str:
    """The checks as a markdown table."""
    lines = [
        "| variant | ISL/OSL | speedup | 95% interval | repeats | min | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    mark = {PASS: "✅ pass", FAIL: "❌ fail", INCONCLUSIVE: "❔ inconclusive"}
    for c in result["checks"]:
        s = c["speedup"]
        shown = f"{s:.2f}x" if isinstance(s, int | float) else "n/a"
        iv = (
            f"[{c['lo']:.2f}, {c['hi']:.2f}] ({100 * c['coverage']:.1f}%)"
            if all(isinstance(c[k], int | float) for k in ("lo", "hi", "coverage"))
            else "none"
        )
        lines.append(
            f"| {c['variant']} | {c['isl_osl']} | {shown} | {iv} | {c['repeats']} "
            f"| {c['min']}x | {mark[c['outcome']]} |"
        )
    lines += [f"- ❌ {f}" for f in result["failures"] if "no bench results" in f]
    return "\n".join(lines) + "\n"
