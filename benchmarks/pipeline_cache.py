"""Time of a fully cached `run` against the first run of the same profile (ci-tiny).

A second run with nothing changed must be all cache hits; this measures what that costs
(profile load, keys with code digests and source hashes, store look-ups, run record) next to
the first run. Interleaved: first run in a fresh work folder, then `--repeats` cached runs,
reported as medians. Prints the processor; ends with one JSON line.

    .venv/bin/python benchmarks/pipeline_cache.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(workdir: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "minitron_deploy", "run", str(REPO / "profiles" / "ci-tiny.yaml")]
    t0 = time.perf_counter()
    r = subprocess.run(
        [*cmd, "--workdir", str(workdir), "--json", "--quiet"], capture_output=True, text=True
    )
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    return dt, json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from minitron_deploy.hardware import processor

    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp) / "wd"
        first, _ = _run(wd)
        cached = []
        for _ in range(args.repeats):
            dt, out = _run(wd)
            assert all(s["cached"] for s in out["stages"]), "a cached run rebuilt something"
            record = json.loads((Path(out["run_dir"]) / "run.json").read_text())
            cached.append((dt, record["seconds"]))
    proc_s = statistics.median(c[0] for c in cached)
    rec_s = statistics.median(c[1] for c in cached)
    cpu = processor()
    print(f"processor: {cpu['summary']}")
    print(f"first run (process): {first:.1f} s")
    print(f"cached run (process, median of {args.repeats}): {proc_s:.2f} s")
    print(f"cached run (inside run(), median): {rec_s:.2f} s")
    print(f"cached / first: {proc_s / first:.3f}")
    print(
        json.dumps(
            {
                "first_s": round(first, 2),
                "cached_process_s": round(proc_s, 3),
                "cached_run_s": round(rec_s, 3),
                "ratio": round(proc_s / first, 4),
                "processor": cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
