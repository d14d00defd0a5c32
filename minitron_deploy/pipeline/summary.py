"""Run summaries in markdown (the run record itself is JSON)."""

from __future__ import annotations

from typing import Any


def _fmt_metrics(m: dict[str, Any]) -> str:
    keys = (
        "params",
        "params_after",
        "val_loss",
        "val_loss_before",
        "val_loss_after",
        "loss",
        "ppl",
        "top1_agreement",
        "kl_per_token",
    )
    parts = []
    for k in keys:
        v = m.get(k)
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, int):
            parts.append(f"{k}={v:,}")
    return ", ".join(parts)


def summary_markdown(record: dict[str, Any]) -> str:
    """A human summary of one run: status, each stage, and the throughput table if any."""
    lines = [
        f"# Run of profile `{record['profile']}`",
        "",
        f"- status: **{record['status']}**"
        + (
            f" (failed at `{record.get('failed_stage')}`: {record.get('error')})"
            if record["status"] != "ok"
            else ""
        ),
        f"- wall time: {record.get('seconds', 0):.1f} s",
        "",
        "| stage | cached | seconds | key | notes |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for s in record["stages"]:
        note = s.get("error") or _fmt_metrics(s.get("metrics", {}))
        lines.append(
            f"| {s['node']} | "
            f"{'yes' if s.get('cached') else 'no'} | {s.get('seconds', 0):.1f} | "
            f"`{s['key'][:12]}` | {note} |"
        )
    bench = next((s for s in record["stages"] if s["stage"] == "bench" and "error" not in s), None)
    if bench:
        rows = bench.get("metrics", {}).get("results", [])
        if rows:
            lines += [
                "",
                "## Throughput",
                "",
                "| model | engine | dtype | ISL/OSL | batch | req/s | output tok/s | "
                "speedup | ideal |",
                "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            for r in rows:
                lines.append(
                    f"| {r['model']} | {r['engine']} | {r['dtype']} | {r['isl']}/{r['osl']} | "
                    f"{r['batch']} | {r['req_s']:.3g} | {r['output_tok_s']:.4g} | "
                    f"{(r.get('speedup_vs_base') or 0):.2f}x | "
                    f"{(r.get('ideal_speedup') or 0):.2f}x |"
                )
    deployables = record.get("deployables") or {}
    if deployables:
        lines += ["", "## Outputs (linked under `outputs/` beside this file)", ""]
        lines += [f"- `{name}`: `{target}`" for name, target in deployables.items()]
    return "\n".join(lines) + "\n"
