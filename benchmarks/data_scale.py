"""Prepared data at scale: preparation throughput, reader memory, reader time per KD step.

1. Preparation throughput (tokens/s) on the same documents (a JSONL of the running Python's
   standard library, builtin:python-stdlib's text): `prepare_corpus` (batched
   `encode_batch_fast`, Rust threads, shards written) against a plain loop calling the
   tokenizer once per document. Interleaved, warm-up round, medians. Goal: >= 3x on 2 cores.
2. Training reader peak RSS for a 10M- and a 100M-token synthetic corpus (random uint16 tokens
   written with the preparation's own shard writer): a fresh subprocess per size opens the
   folder and serves `--steps` micro-batches through `WindowSource` + `Batches` (the
   distillation path); ru_maxrss is reported. Goal: ratio 100M / 10M <= 1.2.
3. Reader time per step against one SmolLM2 KD step at the same micro-batch (teacher:
   SmolLM2-135M shape, 30 layers; student: its width-pruned shape; random weights, which do not
   change the time): median of reads vs median of steps. Goal: <= 1%.

    .venv/bin/python benchmarks/data_scale.py                  # all three, ~5 minutes
    .venv/bin/python benchmarks/data_scale.py --only prepare

The processor is printed with the numbers; the last stdout line is one JSON object. A full run
(no --only) writes benchmarks/results/data_scale.json and its .md (the README's table `main`).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _corpus_jsonl(path: Path, max_docs: int) -> int:
    from minitron_deploy.data.text import iter_documents

    n = 0
    with open(path, "w") as f:
        for d in iter_documents("builtin:python-stdlib"):
            f.write(json.dumps({"text": d.text}) + "\n")
            n += 1
            if n >= max_docs:
                break
    return n


def prepare_throughput(args, tok_dir: Path, work: Path) -> dict:
    from minitron_deploy.data.prepare import prepare_corpus
    from minitron_deploy.data.text import iter_documents
    from minitron_deploy.model.io import load_tokenizer

    src = work / "corpus.jsonl"
    docs = _corpus_jsonl(src, args.docs)
    texts = [d.text for d in iter_documents(str(src))]
    tok = load_tokenizer(tok_dir)

    def plain() -> int:
        n = 0
        for t in texts:  # the straightforward loop: one tokenizer call per document
            n += len(tok(t, add_special_tokens=False)["input_ids"]) + 1
        return n

    def prepared(k: int) -> int:
        ix = prepare_corpus(str(src), tok_dir, work / f"p{k}", progress=False)
        return sum(s["tokens"] for s in ix["splits"].values())

    rates: dict[str, list[float]] = {"plain_loop": [], "prepare": []}
    for rep in range(args.reps + 1):  # round 0 warms up (page cache, tokenizer, imports)
        for name in rates:
            t0 = time.perf_counter()
            n = plain() if name == "plain_loop" else prepared(rep)
            dt = time.perf_counter() - t0
            if rep:
                rates[name].append(n / dt)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "documents": docs,
        "tokens": n,
        "tokens_per_s": {k: round(v) for k, v in med.items()},
        "ratio": round(med["prepare"] / med["plain_loop"], 2),
    }


def write_synthetic(out: Path, tokens: int, vocab: int = 49152, doc_tokens: int = 1 << 20) -> None:
    """A prepared folder of random tokens, written with the preparation's shard writer."""
    import numpy as np

    from minitron_deploy.data.prepare import SPLITS, ShardWriter, write_index

    out.mkdir(parents=True)
    w = ShardWriter(out, "H", {s: [] for s in SPLITS})
    rng = np.random.default_rng(0)
    left = tokens
    while left > 0:
        n = min(doc_tokens, left)
        w.add("train", rng.integers(0, vocab, n, dtype=np.uint16))
        left -= n
        if len(w.buf["train"]) >= 1 << 24:
            w.flush()
    w.add("validation", rng.integers(0, vocab, 4096, dtype=np.uint16))
    w.flush()
    write_index(
        out,
        w.shards,
        key=f"synthetic-{tokens}",
        source="synthetic",
        source_sha256="",
        tokenizer_sha256="",
        vocab_size=vocab,
        eos_token_id=None,
        typecode="H",
        val_fraction=0.05,
    )


def _reader_child(path: str, steps: int, batch: int, seq_len: int) -> None:
    import resource

    from minitron_deploy.data.shards import PreparedData, WindowSource
    from minitron_deploy.distill.batches import Batches

    src = WindowSource(PreparedData(path).split("train"), seq_len, seed=0)
    batches = Batches(src, global_batch=batch, micro_batch=batch, world_size=1)
    t0 = time.perf_counter()
    times = []
    for step in range(steps):
        t = time.perf_counter()
        ids, labels = batches.get(step * 997, 0, 0)  # steps spread over the whole corpus
        times.append(time.perf_counter() - t)
        assert ids.shape == (batch, seq_len)
    print(
        json.dumps(
            {
                "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "read_s_median": statistics.median(times),
                "wall_s": time.perf_counter() - t0,
            }
        )
    )


def reader_memory(args, work: Path) -> dict:
    out = {}
    for tokens in (10_000_000, 100_000_000):
        path = work / f"synthetic-{tokens}"
        write_synthetic(path, tokens)
        r = subprocess.run(
            [sys.executable, __file__, "--reader-child", str(path), "--steps", str(args.steps),
             "--batch", str(args.batch), "--seq-len", str(args.seq_len)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        out[f"{tokens // 1_000_000}M"] = json.loads(r.stdout.strip().splitlines()[-1])
    ratio = out["100M"]["maxrss_bytes"] / out["10M"]["maxrss_bytes"]
    return {"runs": out, "rss_ratio_100M_over_10M": round(ratio, 3)}


def kd_step_seconds(args) -> float:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.distill.student import KDModule, teacher_forward
    from minitron_deploy.model.shapes import KNOWN_SHAPES
    from minitron_deploy.testing import tiny_config

    teacher_shape = {**KNOWN_SHAPES["smollm2-135m"], "rope_scaling": None}
    student_shape = {
        **teacher_shape, "hidden_size": 384, "intermediate_size": 1024, "num_attention_heads": 6,
    }  # fmt: skip
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(tiny_config(**teacher_shape)).eval().requires_grad_(False)
    student = LlamaForCausalLM(tiny_config(**student_shape)).train()
    kd = KDModule(student, None, [], False, dict(chunk_tokens=256))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, teacher_shape["vocab_size"], (args.batch, args.seq_len))
    times = []
    for rep in range(args.kd_reps + 1):
        t0 = time.perf_counter()
        to = teacher_forward(teacher, ids, [], False, False)
        kd(ids, None, teacher.lm_head.weight, to)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rep:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["prepare", "memory", "step"])
    ap.add_argument("--docs", type=int, default=4000, help="documents for the throughput test")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="reader steps per corpus")
    ap.add_argument("--batch", type=int, default=4, help="sequences per micro-batch")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--kd-reps", type=int, default=3)
    ap.add_argument("--reader-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reader_child:
        return _reader_child(args.reader_child, args.steps, args.batch, args.seq_len)
    import torch

    from minitron_deploy.hardware import processor
    from minitron_deploy.model.teacher import builtin_model

    result: dict = {
        "benchmark": "data_scale",
        "processor": processor()["summary"],
        "torch_threads": torch.get_num_threads(),
    }
    print(f"processor: {result['processor']}, {result['torch_threads']} torch threads")
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        work = Path(tmp)
        if args.only in (None, "prepare"):
            r = prepare_throughput(args, builtin_model("smollm2-135m"), work)
            result["prepare"] = r
            t = r["tokens_per_s"]
            print(
                f"prepare: {t['prepare']:,} tok/s vs plain loop {t['plain_loop']:,} tok/s = "
                f"{r['ratio']:.2f}x  ({r['tokens']:,} tokens, SmolLM2 tokenizer; goal >= 3x)"
            )
        if args.only in (None, "memory", "step"):
            r = reader_memory(args, work)
            result["reader"] = r
            for k, v in r["runs"].items():
                print(f"reader {k:>4}: peak RSS {v['maxrss_bytes'] / 2**20:7.1f} MiB, "
                      f"median read {v['read_s_median'] * 1e3:.3f} ms per micro-batch")  # fmt: skip
            print(f"reader RSS 100M / 10M = {r['rss_ratio_100M_over_10M']:.3f}  (goal <= 1.2)")
        if args.only in (None, "step"):
            step = kd_step_seconds(args)
            read = result["reader"]["runs"]["100M"]["read_s_median"]
            result["kd_step_s"] = round(step, 4)
            result["read_over_step"] = round(read / step, 6)
            print(
                f"KD step (SmolLM2 teacher, width student, {args.batch}x{args.seq_len}) "
                f"{step:.2f} s; reader {read * 1e3:.3f} ms = {100 * read / step:.4f}% of a "
                "step (goal <= 1%)"
            )
    print(json.dumps(result))
    if args.only is None:
        write_result(result, args)


def write_result(result: dict, args: argparse.Namespace) -> None:
    """benchmarks/results/data_scale.json + .md, with the README's table."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import results

    from minitron_deploy.hardware import auto_dtype_name

    rec = results.record(
        "data_scale",
        title="Prepared data at scale",
        results=result,
        dtype=auto_dtype_name("cpu"),
        threads=result["torch_threads"],
        tables={"main": main_table(results, result, args.batch, args.seq_len)},
        notes=[
            f"{result['prepare']['documents']:,} documents of builtin:python-stdlib "
            f"({result['prepare']['tokens']:,} tokens, SmolLM2 tokenizer); medians of "
            f"{args.reps} interleaved rounds after a warm-up round",
            f"reader: {args.steps} micro-batches per corpus in a fresh process (ru_maxrss); KD "
            f"step: median of {args.kd_reps} after a warm-up, random weights of the SmolLM2 "
            "shapes",
        ],
    )
    results.write(rec)


def main_table(results, result: dict, batch: int, seq_len: int) -> dict:
    """The README's table from the recorded numbers (`render` rebuilds it from the JSON)."""
    pr, rd = result["prepare"], result["reader"]
    t = pr["tokens_per_s"]
    rss = {k: v["maxrss_bytes"] / 2**20 for k, v in rd["runs"].items()}
    read = rd["runs"]["100M"]["read_s_median"]
    rows = [
        [
            "preparation throughput (batched, shards written) vs a plain per-document loop",
            f"{t['prepare']:,} vs {t['plain_loop']:,} tokens/s = **{pr['ratio']:.2f}x**",
            ">= 3x",
        ],
        [
            "training reader peak RSS, 10M / 100M-token corpus",
            f"{rss['10M']:.0f} / {rss['100M']:.0f} MiB, ratio "
            f"**{rd['rss_ratio_100M_over_10M']:.2f}**",
            "<= 1.2",
        ],
        [
            f"reading one {batch} x {seq_len} micro-batch vs one SmolLM2 KD step",
            f"{read * 1e3:.3f} ms vs {result['kd_step_s']:.1f} s = "
            f"**{100 * read / result['kd_step_s']:.1e}%**",
            "<= 1%",
        ],
    ]
    return results.table(["measure", "result", "goal"], rows)


if __name__ == "__main__":
    main()
