"""Read exports back under another transformers (run by tests/compat/test_transformers457.py).

Runs in `.venv-compat` (transformers 4.57.1, the version TensorRT-LLM <= 1.2 release containers
pin): a stand-in for those containers, which cannot run here. For each export folder given it
loads the model the way that environment would (stock `LlamaForCausalLM.from_pretrained` for
HF BF16, the project's readers for FP8 and TensorRT-LLM checkpoints), loads the tokenizer with
`AutoTokenizer`, computes logits on the probe tokens, compares them with the reference logits
computed by the main venv, and prints one JSON line.

    python readback.py REFS.safetensors NAME=KIND:DIR [NAME=KIND:DIR ...]
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    from minitron_deploy.export.hf import load_hf, logits_of
    from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint
    from minitron_deploy.export.trtllm_ckpt import load_trtllm_checkpoint
    from minitron_deploy.export.verify import compare_logits

    refs = load_file(sys.argv[1])
    tokens = refs.pop("tokens")
    out = {"transformers": transformers.__version__, "exports": {}}
    for spec in sys.argv[2:]:
        name, rest = spec.split("=", 1)
        kind, path = rest.split(":", 1)
        if kind == "hf":
            model = load_hf(path)
        elif kind == "hf-fp8":
            model = load_fp8_checkpoint(path, dequantize=False)
        elif kind == "trtllm-ckpt":
            model = load_trtllm_checkpoint(path)
        else:
            raise SystemExit(f"unknown kind {kind}")
        got = logits_of(model, tokens)
        row = compare_logits(refs[name], got)
        if kind != "trtllm-ckpt":
            cfg = AutoConfig.from_pretrained(path)
            row["rope_theta"] = getattr(cfg, "rope_theta", None)
            row["rope_scaling"] = getattr(cfg, "rope_scaling", None)
            tok = AutoTokenizer.from_pretrained(path)
            row["tokenizer"] = type(tok).__name__
            row["token_ids"] = tok("def main(argv):")["input_ids"]
        else:
            row["rope_theta"] = model.config.rope_theta
            row["rope_scaling"] = model.config.rope_scaling
        out["exports"][name] = row
        del model
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
