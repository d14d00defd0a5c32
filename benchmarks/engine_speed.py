"""Engine speed on SmolLM2-135M at batch 32 (CPU): the built-in engine against the references,
and Minitron-like depth/width shapes against their compute ideals. Last stdout line is JSON.

Part 1 (same dtype, interleaved, warm-up, ≥ 3 repeats, medians): built-in vs itself without
prepacked weights ("torch-plain"), vs HF `generate` with a static cache, vs HF `generate` with the
dynamic cache (all bfloat16), and built-in vs onnxruntime-genai (both float32: genai's CPU builder
offers fp32 only among float precisions). Each row also gives the share of its greedy tokens that
equal the built-in engine's (bf16 GEMMs with another accumulation order flip near-ties).
Part 2: the base against a width-pruned shape (hidden x0.75, FFN x0.64, heads kept, as
Llama-3.1-Minitron-4B-Width) and a depth-pruned one (half the layers), made by slicing the real
weights (speed does not depend on which channels are kept), at batch 32 (base) / 64 (pruned).

    python benchmarks/engine_speed.py                  # ~2 min (part 1) + part 2 on 2 idle cores
    python benchmarks/engine_speed.py --isl 64 --osl 128 --skip ort
    python benchmarks/engine_speed.py --device cuda --random-weights --skip ort   # on a GPU

On CUDA the built-in engine decodes in CUDA graphs and HF's static cache compiles its forward
(transformers does that by itself there); onnxruntime-genai is CPU-only here. `--random-weights`
writes a random SmolLM2-135M-shaped checkpoint (speed does not depend on the values) for machines
without the GGUF package; token agreement then compares noise-level logits and means little.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sliced_checkpoint(src: Path, dest: Path, *, layers: int | None = None, hidden=None, ffn=None):
    """Write a smaller HF checkpoint by slicing `src` (first layers / first channels)."""
    from safetensors.torch import load_file, save_file

    from minitron_deploy.model.io import copy_tokenizer, read_config, weight_files

    cfg = read_config(src)
    sd = {}
    for f in weight_files(src):
        sd.update(load_file(str(f)))
    n_layers = layers or cfg["num_hidden_layers"]
    h = hidden or cfg["hidden_size"]
    i = ffn or cfg["intermediate_size"]
    out = {}
    for name, t in sd.items():
        if name.startswith("model.layers.") and int(name.split(".")[2]) >= n_layers:
            continue
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            t = t[:i, :h]
        elif name.endswith("down_proj.weight"):
            t = t[:h, :i]
        elif name.endswith("o_proj.weight"):
            t = t[:h]
        elif name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            t = t[:, :h]
        elif name.endswith("norm.weight"):
            t = t[:h]
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            t = t[:, :h]
        out[name] = t.contiguous().clone()
    dest.mkdir(parents=True)
    save_file(out, str(dest / "model.safetensors"))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    new = cfg | {"num_hidden_layers": n_layers, "hidden_size": h, "intermediate_size": i}
    (dest / "config.json").write_text(json.dumps(new | {"head_dim": head_dim}))
    copy_tokenizer(src, dest)
    return dest


def random_checkpoint(dest: Path) -> Path:
    """A SmolLM2-135M-shaped checkpoint with random weights (config + model.safetensors)."""
    import torch
    from safetensors.torch import save_file

    from minitron_deploy.engines.torch_weights import random_state_dict
    from minitron_deploy.model.shapes import KNOWN_SHAPES

    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}
    cfg |= KNOWN_SHAPES["smollm2-135m"] | {"rms_norm_eps": 1e-5, "rope_theta": 100000.0}
    dest.mkdir(parents=True)
    save_file(random_state_dict(cfg, torch.bfloat16, seed=0), str(dest / "model.safetensors"))
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def time_engines(engines: dict, ids: list[list[int]], osl: int, warmup: int, repeats: int):
    """Interleaved timing: ({label: [seconds per run]}, {label: tokens}) after warm-up runs."""
    import time

    tokens = {}
    for k, e in engines.items():
        for _ in range(warmup):
            tokens[k] = e.generate(ids, osl, ignore_eos=True)
    times = {k: [] for k in engines}
    for _ in range(repeats):
        for k, e in engines.items():
            t0 = time.perf_counter()
            out = e.generate(ids, osl, ignore_eos=True)
            times[k].append(time.perf_counter() - t0)
            assert all(len(o) == osl for o in out), k
            tokens[k] = out
    return times, tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="engine speed on SmolLM2-135M")
    p.add_argument("--model", default="smollm2-135m", help="checkpoint folder or built-in name")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--isl", type=int, default=32)
    p.add_argument("--osl", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--skip", default="", help="comma list of: hf, ort, prune")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA graphs for the built-in)")
    p.add_argument(
        "--dtype",
        default="auto",
        help="compute dtype of the comparison (auto: what minitron-deploy picks on this device)",
    )
    p.add_argument(
        "--random-weights", action="store_true", help="random SmolLM2-shaped weights (no GGUF)"
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        return _main(args, Path(tmp))


def _main(args: argparse.Namespace, tmp: Path) -> int:
    import torch

    from minitron_deploy.bench import BenchConfig, run_matrix
    from minitron_deploy.commands.bench import parse_models
    from minitron_deploy.console import info
    from minitron_deploy.engines import get_engine
    from minitron_deploy.engines.trtllm import synthetic_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    cuda = args.device.startswith("cuda")
    if cuda:
        skip.add("ort")  # genai's CPU build only
    opts = {"cuda_graphs": True} if cuda else {"prepack": True}  # fp32 too: the built-in at best
    if args.random_weights:
        model = random_checkpoint(tmp / "random")
    else:
        ((_, model),) = parse_models([args.model])
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    ids = synthetic_rows(args.isl, args.batch, vocab, seed=0)
    result: dict = {"batch": args.batch, "isl": args.isl, "osl": args.osl, "engines": {}}

    def make(name: str, dtype: str):
        if name == "torch":
            return get_engine("torch", model, dtype=dtype, device=args.device, **opts)
        if name == "torch-plain":  # the built-in engine without prepacked weights
            return get_engine("torch", model, dtype=dtype, prepack=False)
        return get_engine(name, model, dtype=dtype, device=args.device)

    from minitron_deploy.hardware import dtype_name

    dtype = dtype_name(args.dtype, args.device)
    mine = ["torch"] if cuda else ["torch", "torch-plain"]  # prepacking is CPU-only
    groups = [(dtype, mine + ([] if "hf" in skip else ["hf-static", "hf"]))]
    if "ort" not in skip:  # onnxruntime-genai runs float32 on CPU
        if dtype == "float32":
            groups[0][1].append("ort")
        else:
            groups.append(("float32", ["torch", "ort"]))
    for dtype, names in groups:
        info(f"[engine_speed] {dtype}: {names}")
        engines = {f"{n}/{dtype}": make(n, dtype) for n in names}
        times, tokens = time_engines(engines, ids, args.osl, args.warmup, args.repeats)
        ours = statistics.median(times[f"torch/{dtype}"])
        for k, t in times.items():
            med = statistics.median(t)
            same = sum(
                a == b
                for ra, rb in zip(tokens[k], tokens[f"torch/{dtype}"], strict=True)
                for a, b in zip(ra, rb, strict=True)
            )
            result["engines"][k] = {
                "median_s": med,
                "output_tok_s": args.batch * args.osl / med,
                "times_s": [round(x, 3) for x in t],
                "builtin_speedup": med / ours,
                "tokens_equal_builtin": same / (args.batch * args.osl),
            }
        for e in engines.values():
            e.close()

    if "prune" not in skip:
        from minitron_deploy.model.io import read_config

        cfg = read_config(model)
        h, i = cfg["hidden_size"], cfg["intermediate_size"]
        width = sliced_checkpoint(
            model, tmp / "width", hidden=(h * 3 // 4) // 8 * 8, ffn=(i * 9 // 14) // 8 * 8
        )
        depth = sliced_checkpoint(model, tmp / "depth", layers=cfg["num_hidden_layers"] // 2)
        bcfg = BenchConfig(
            engine="torch",
            dtype=dtype,
            device=args.device,
            engine_opts=opts,
            isl_osl=f"{args.isl}/{args.osl}",
            batch=[args.batch, 2 * args.batch, 2 * args.batch],
            warmup=args.warmup,
            repeats=args.repeats,
        )
        res = run_matrix([("base", model), ("width", width), ("depth", depth)], bcfg)
        result["pruned"] = {
            r["model"]: {
                k: r[k]
                for k in ("batch", "output_tok_s", "speedup_vs_base", "ideal_speedup")
                + ("ideal_speedup_memory", "spread")
            }
            for r in res["results"]
        }

    result["device"] = args.device
    result["dtype"] = dtype
    result["random_weights"] = args.random_weights
    print(
        f"SmolLM2-135M ({args.device}, {dtype}), batch {args.batch}, "
        f"ISL {args.isl} / OSL {args.osl} (medians)"
    )
    for k, v in result["engines"].items():
        print(
            f"  {k:20s} {v['output_tok_s']:9.1f} tok/s   built-in is {v['builtin_speedup']:.2f}x"
            f"   tokens equal to built-in {100 * v['tokens_equal_builtin']:.1f}%"
        )
    for k, v in result.get("pruned", {}).items():
        print(
            f"  {k:6s} batch {v['batch']:3d} {v['output_tok_s']:9.1f} tok/s  speedup "
            f"{v['speedup_vs_base']:.2f}x  compute ideal {v['ideal_speedup']:.2f}x  "
            f"memory ideal {v['ideal_speedup_memory']:.2f}x"
        )
    from minitron_deploy.hardware import processor

    result["processor"] = processor()
    print(f"processor: {result['processor']['summary']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
