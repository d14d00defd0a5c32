"""Load test: SmolLM2-135M variants behind a real Triton server (CPU), driven by aiperf.

Both variants are packaged with the `torch` backend into one repository and served by the
tritonserver bundled in nvidia-pytriton; aiperf (own venv, `.venv-aiperf`: it needs numpy 2,
pytriton pins numpy < 2; created here if missing) sends requests to
`/v2/models/<variant>/generate` at each concurrency. Runs are interleaved (repeat -> concurrency
-> variant, alternating the variant order) after a warm-up, and each cell reports the median
over repeats of request throughput and latency percentiles, plus the pruned/base ratios.

The pruned variant defaults to SmolLM2 with layers 15-29 dropped (`minitron-deploy prune
--drop-layers`, not distilled: its text is poor, its speed is what is measured); pass
`--pruned DIR` for a real one. Last stdout line: one JSON object.

    .venv/bin/python benchmarks/triton_load.py                      # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/triton_load.py --concurrency 1 4 8 --requests 64 --repeats 3 \
        --isl 128 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
AIPERF_VENV = REPO_ROOT / ".venv-aiperf"
AIPERF_LOCK = REPO_ROOT / "requirements" / "aiperf.lock"  # exact versions (`make lock`)


def ensure_aiperf(venv: Path = AIPERF_VENV) -> Path:
    """The aiperf executable, installing its lock into its own venv on first use (as
    `make aiperf` does)."""
    exe = venv / "bin" / "aiperf"
    if not exe.is_file():
        print(f"creating {venv} from {AIPERF_LOCK.name}", file=sys.stderr)
        py = shutil.which("python3.11") or shutil.which("python3") or sys.executable
        subprocess.run([py, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "-r", str(AIPERF_LOCK)]
        subprocess.run(pip, check=True)
    return exe


def variant_dirs(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """name -> checkpoint: the built-in base and a pruned copy (made once, cached in `work`)."""
    from minitron_deploy.model.teacher import builtin_model

    base = Path(builtin_model("smollm2-135m"))
    pruned = Path(args.pruned) if args.pruned else work / f"smollm2-drop-{args.drop_layers}"
    if not args.pruned and not (pruned / "config.json").is_file():
        cmd = [sys.executable, "-m", "minitron_deploy", "prune", "--model", str(base)]
        cmd += ["--out", str(pruned), "--drop-layers", args.drop_layers, "--overwrite"]
        subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    return {"base": base, "pruned": pruned}


def build_repo(variants: dict[str, Path], dest: Path, args: argparse.Namespace) -> Path:
    """One repository holding every variant as its own model (checkpoints referenced)."""
    from minitron_deploy.triton import PackageConfig, package_triton

    repo = dest / "repo"
    repo.mkdir(parents=True)
    for name, ckpt in variants.items():
        cfg = PackageConfig(
            backend="torch",
            model_name=name,
            decoupled=True,  # the torch model batches concurrent requests itself when decoupled
            max_batch_size=args.max_batch_size,
            max_tokens=args.max_tokens,
            copy_model=False,
            num_threads=args.threads,
            dtype=args.dtype,
        )
        package_triton(ckpt, dest / f"pkg-{name}", cfg)
        shutil.copytree(dest / f"pkg-{name}" / name, repo / name)
    return repo


# Every request asks for the completion alone: TensorRT-LLM's llmapi model (and our torch model,
# which follows it) returns prompt + completion by default, and aiperf counts the tokens of
# `text_output` as output tokens, so an echoed prompt would count as generated.
EXCLUDE_INPUT = {"sampling_param_exclude_input_from_output": True}


def payload_template(max_tokens: int) -> str:
    """aiperf's Jinja payload template: the prompt as a JSON string, a fixed max_tokens and
    the prompt excluded from `text_output`."""
    fixed = json.dumps({"sampling_param_max_tokens": max_tokens, **EXCLUDE_INPUT})
    return '{"text_input": {{ text|tojson }}, ' + fixed[1:]


def warm_up(url: str, model: str, max_tokens: int, n: int = 3) -> None:
    """A few requests; fails unless the server leaves the prompt out of `text_output`."""
    prompt = "def main(argv):"
    body = json.loads(payload_template(max_tokens).replace("{{ text|tojson }}", json.dumps(prompt)))
    for _ in range(n):
        req = urllib.request.Request(
            f"http://{url}/v2/models/{model}/generate", json.dumps(body).encode()
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            text = json.loads(r.read())["text_output"]
        if text.startswith(prompt):
            raise RuntimeError(
                f"{model} echoed the prompt although the request excluded it: aiperf would "
                "count prompt tokens as output tokens"
            )


def run_aiperf(
    exe: Path,
    url: str,
    model: str,
    tokenizer: Path,
    concurrency: int,
    args: argparse.Namespace,
    out: Path,
) -> dict[str, float]:
    """One aiperf profile run; returns request throughput and latency percentiles (ms)."""
    template = payload_template(args.max_tokens)
    extra = json.dumps({"payload_template": template, "response_field": "text_output"})
    cmd = [
        str(exe),
        "profile",
        "--model",
        model,
        "--url",
        f"http://{url}",
        "--endpoint-type",
        "template",
        "--custom-endpoint",
        f"/v2/models/{model}/generate",
        "--extra-inputs",
        extra,
        "--tokenizer",
        str(tokenizer),
        "--concurrency",
        str(concurrency),
        "--request-count",
        str(args.requests),
        "--isl",
        str(args.isl),
        "--isl-stddev",
        "0",
        "--osl",
        str(args.max_tokens),
        "--random-seed",
        "0",
        "--artifact-dir",
        str(out),
        "--ui-type",
        "none",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    exports = sorted(out.rglob("profile_export_aiperf.json"))
    if proc.returncode != 0 or not exports:
        raise RuntimeError(f"aiperf failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    data = json.loads(exports[-1].read_text())
    lat = data["request_latency"]
    return {
        "request_throughput_req_s": data["request_throughput"]["avg"],
        "latency_p50_ms": lat["p50"],
        "latency_p90_ms": lat["p90"],
        "latency_p99_ms": lat["p99"],
        "latency_avg_ms": lat["avg"],
    }


def summarize(runs: list[dict]) -> list[dict]:
    """Median over repeats per (variant, concurrency), with the pruned/base ratios."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        cells.setdefault((r["variant"], r["concurrency"]), []).append(r)
    rows = []
    for (variant, conc), rs in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {"variant": variant, "concurrency": conc, "repeats": len(rs)}
        for k in rs[0]["metrics"]:
            row[k] = statistics.median(r["metrics"][k] for r in rs)
        rows.append(row)
    by = {(r["variant"], r["concurrency"]): r for r in rows}
    for r in rows:
        base = by.get(("base", r["concurrency"]))
        if base and r["variant"] != "base":
            r["throughput_ratio_vs_base"] = (
                r["request_throughput_req_s"] / base["request_throughput_req_s"]
            )
            r["p50_latency_ratio_vs_base"] = r["latency_p50_ms"] / base["latency_p50_ms"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--requests", type=int, default=8, help="requests per aiperf run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--isl", type=int, default=32, help="synthetic prompt tokens")
    p.add_argument("--max-tokens", type=int, default=8, help="output tokens per request")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch threads in the server model")
    p.add_argument("--dtype", default="float32", help="engine dtype (fp32 is fastest on CPU)")
    p.add_argument("--pruned", help="a pruned checkpoint (default: drop --drop-layers)")
    p.add_argument("--drop-layers", default="15-29", help="layers dropped for the default pruned")
    p.add_argument("--workdir", default=str(REPO_ROOT / "work" / "triton_load"))
    args = p.parse_args(argv)

    from minitron_deploy.triton.server import TritonServer

    exe = ensure_aiperf()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    variants = variant_dirs(args, work)
    runs = []
    with tempfile.TemporaryDirectory(prefix="triton-load-") as tmp:
        repo = build_repo(variants, Path(tmp), args)
        t0 = time.time()
        with TritonServer(repo, ready_timeout_s=600) as srv:
            print(f"server ready in {time.time() - t0:.1f} s: {srv.info()}", file=sys.stderr)
            for name in variants:
                warm_up(srv.http_url, name, args.max_tokens)
            order = list(variants)
            for rep in range(args.repeats):
                for conc in args.concurrency:
                    for name in order:
                        out = Path(tmp) / f"aiperf-{name}-c{conc}-r{rep}"
                        m = run_aiperf(exe, srv.http_url, name, variants["base"], conc, args, out)
                        runs.append(
                            {"variant": name, "concurrency": conc, "repeat": rep, "metrics": m}
                        )
                        print(f"rep {rep} c={conc} {name}: {m}", file=sys.stderr)
                    order.reverse()  # alternate who goes first
    rows = summarize(runs)
    from minitron_deploy.hardware import processor

    print(f"processor: {processor()['summary']}")
    print(
        f"{'variant':8} {'conc':>4} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
        f" {'x base':>7}"
    )
    for r in rows:
        ratio = r.get("throughput_ratio_vs_base")
        print(
            f"{r['variant']:8} {r['concurrency']:>4} {r['request_throughput_req_s']:7.2f} "
            f"{r['latency_p50_ms']:8.0f} {r['latency_p90_ms']:8.0f} {r['latency_p99_ms']:8.0f}"
            f" {(f'{ratio:.2f}x' if ratio else ''):>7}"
        )
    print(
        json.dumps(
            {
                "benchmark": "triton_load",
                "server": "tritonserver 2.51 (nvidia-pytriton), torch backend, CPU",
                "variants": {k: str(v) for k, v in variants.items()},
                "settings": {k: v for k, v in vars(args).items()},
                "results": rows,
                "runs": runs,
                "processor": processor(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
