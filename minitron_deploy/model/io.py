"""Load and save Hugging Face Llama checkpoints (safetensors only), with provenance records."""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import HashCache, atomic_dir, atomic_write_json, sha256_tree
from minitron_deploy.model.shapes import rope_settings

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
PROVENANCE = "provenance.json"
SUPPORTED_ARCHS = {"LlamaForCausalLM"}


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check `config.json` of a Llama checkpoint folder.

    Raises:
        InputError: the folder or config is missing, unreadable, or not a Llama causal LM.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(
            f"model folder {path} does not exist", fix="pass a local HF checkpoint folder"
        )
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InputError(
            f"{path} has no config.json, so it is not a Hugging Face checkpoint",
            fix="point --model at the folder that holds config.json and *.safetensors",
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"config.json is not valid JSON: {e}", where=str(cfg_path)) from e
    if not isinstance(cfg, dict):
        raise InputError("config.json must hold a JSON object", where=str(cfg_path))
    if cfg.get("auto_map"):
        raise InputError(
            "this checkpoint needs custom code (auto_map); minitron-deploy never runs "
            "trust_remote_code",
            where=str(cfg_path),
            fix="convert it to a stock LlamaForCausalLM checkpoint first",
        )
    mtype, archs = cfg.get("model_type"), cfg.get("architectures") or ["LlamaForCausalLM"]
    if mtype != "llama" or not set(archs) <= SUPPORTED_ARCHS:
        raise InputError(
            f"unsupported architecture model_type={mtype!r} architectures={archs}; "
            "only Llama causal LMs are supported",
            where=str(cfg_path),
            fix="use a LlamaForCausalLM checkpoint",
        )
    for key in (
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "intermediate_size",
        "vocab_size",
    ):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise InputError(
                f"config field {key}={cfg.get(key)!r} must be a positive integer",
                where=str(cfg_path),
            )
    return cfg


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked to exist and be readable.

    Raises:
        InputError: only pickle weights, a shard named by the index is missing, or a file is
            truncated or corrupt.
    """
    from safetensors import safe_open

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"invalid safetensors index: {e}", where=str(index)) from e
        files = [path / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputError(
                f"shards named by the index are missing: {missing}",
                where=str(index),
                fix="copy the complete checkpoint",
            )
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        if list(path.glob("*.bin")) or list(path.glob("*.pt")) or list(path.glob("*.pth")):
            raise InputError(
                f"{path} holds only pickle weights (*.bin/*.pt); minitron-deploy loads safetensors "
                "only, since pickle can run arbitrary code",
                fix="convert with `model.save_pretrained(dir, safe_serialization=True)` in a "
                "trusted environment",
            )
        raise InputError(f"{path} has no *.safetensors weights", fix="copy the weight files too")
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                keys = list(sf.keys())
                if keys:  # touching the last tensor catches a truncated data section
                    sf.get_slice(keys[-1])
        except Exception as e:  # safetensors raises several types for corrupt files
            raise InputError(
                f"cannot read safetensors file ({e})",
                where=str(f),
                fix="the file is truncated or corrupt; copy it again",
            ) from e
        size = f.stat().st_size
        with open(f, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        if 8 + header_len + end > size:
            raise InputError(
                f"safetensors file is truncated ({size} bytes, header needs "
                f"{8 + header_len + end})",
                where=str(f),
                fix="copy it again",
            )
    return files


def llama_config(cfg: dict[str, Any]) -> LlamaConfig:
    """A `LlamaConfig` from a config dict, read the same under transformers 4.57 and 5.x
    whichever rope spelling the dict uses (`compat_config`); quantization settings dropped."""
    from transformers import LlamaConfig

    return LlamaConfig.from_dict(
        compat_config({k: v for k, v in cfg.items() if k != "quantization_config"})
    )


def load_config(path: str | Path) -> LlamaConfig:
    """A `LlamaConfig` from a checked checkpoint folder."""
    return llama_config(read_config(path))


def resolve_dtype(dtype: str | torch.dtype | None, cfg: dict[str, Any] | None = None):
    """A torch dtype from a name; "auto" or None means the checkpoint's own dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dtype = (cfg or {}).get("dtype") or (cfg or {}).get("torch_dtype") or "float32"
    names = {
        "bf16": "bfloat16",
        "fp16": "float16",
        "fp32": "float32",
        "float": "float32",
        "half": "float16",
    }
    name = names.get(str(dtype), str(dtype)).replace("torch.", "")
    if name not in ("bfloat16", "float16", "float32"):
        raise InputError(f"unsupported dtype {dtype!r}", fix="use bfloat16, float16 or float32")
    return getattr(torch, name)


def load_llama(
    path: str | Path, dtype: str | torch.dtype | None = "float32", device: str = "cpu"
) -> LlamaForCausalLM:
    """Load a local HF Llama checkpoint from safetensors, refusing anything unsafe or partial.

    Args:
        path: checkpoint folder (single file or sharded safetensors with index).
        dtype: "float32" (default, best for CPU math), "bfloat16", "float16" or "auto".
        device: where to put the model.

    Raises:
        InputError: see `read_config` and `weight_files`; also missing or unexpected tensors.
    """
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    cfg = read_config(path)
    weight_files(path)
    config = load_config(path)
    torch_dtype = resolve_dtype(dtype, cfg)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = LlamaForCausalLM.from_pretrained(
            str(path),
            config=config,
            dtype=torch_dtype,
            use_safetensors=True,
            output_loading_info=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"cannot load checkpoint: {e}", where=str(path)) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = {
        k: v
        for k, v in info.items()
        if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise InputError(
            f"checkpoint tensors do not match its config ({detail})",
            where=str(path),
            fix="the checkpoint is incomplete or its config is wrong",
        )
    model.eval()
    return model.to(device) if device != "cpu" else model


def provenance(
    source: str | Path | None, command: str | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A provenance record: source hash, command, library versions, git revision, time."""
    import safetensors
    import torch
    import transformers

    from minitron_deploy import __version__

    rec: dict[str, Any] = {
        "tool": "minitron-deploy",
        "tool_version": __version__,
        "git_revision": _git_revision(),
        "command": command or " ".join(sys.argv),
        "created_unix": int(time.time()),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    if source is not None:
        rec["source"] = {"path": str(source), "sha256": source_digest(source)}
    if extra:
        rec.update(extra)
    return rec


def source_digest(source: str | Path) -> str:
    """SHA-256 of a checkpoint folder (provenance files excluded), remembered by the (size,
    mtime) of every file in `$MINITRON_CACHE/source-hashes.json`: the stages that read one
    16 GB checkpoint in turn hash it once, not once each."""
    import os

    source = Path(source)
    if not source.is_dir():
        return sha256_tree(source, exclude=(PROVENANCE,))
    root = Path(os.environ.get("MINITRON_CACHE", Path.home() / ".cache" / "minitron-deploy"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        return HashCache(root / "source-hashes.json").tree(source, exclude=(PROVENANCE,))
    except OSError:  # a read-only cache: hash without remembering
        return sha256_tree(source, exclude=(PROVENANCE,))


def _git_revision() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# transformers 5 writes only `rope_parameters` and `dtype`, and tags re-saved tokenizers
# `TokenizersBackend`; transformers 4.57 (TensorRT-LLM <= 1.2 containers) reads `rope_theta` /
# `rope_scaling` / `torch_dtype` and knows no `TokenizersBackend`. Checkpoints carry both.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # 4.57's class; an alias of TokenizersBackend in 5.x
_TRANSFORMERS5_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")


def compat_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with every spelling transformers 4.57 and 5.x read: `rope_theta` and
    `rope_scaling` (llama3 keys, no theta inside; null for default rope) beside
    `rope_parameters`, `torch_dtype` beside `dtype`, and an explicit `head_dim`."""

    out = dict(cfg)
    theta, scaling = rope_settings(cfg)
    out["rope_theta"] = theta
    out["rope_scaling"] = (
        {k: v for k, v in scaling.items() if k != "rope_theta"} if scaling else None
    )
    out["rope_parameters"] = {"rope_type": "default", **(out["rope_scaling"] or {})}
    out["rope_parameters"]["rope_theta"] = theta
    dtype = out.get("dtype") or out.get("torch_dtype")
    if dtype:
        out["dtype"] = out["torch_dtype"] = str(dtype).replace("torch.", "")
    if "hidden_size" in out and "num_attention_heads" in out:
        out["head_dim"] = int(
            out.get("head_dim") or out["hidden_size"] // out["num_attention_heads"]
        )
    return out


def make_compatible(dest: str | Path) -> None:
    """Rewrite a written checkpoint's config.json and tokenizer_config.json so that both
    transformers 4.57 and 5.x load them identically (see `compat_config`)."""
    dest = Path(dest)
    cfg_path = dest / "config.json"
    if cfg_path.is_file():
        atomic_write_json(cfg_path, compat_config(json.loads(cfg_path.read_text())))
    tok_path = dest / "tokenizer_config.json"
    if tok_path.is_file():
        tok = json.loads(tok_path.read_text())
        if tok.get("tokenizer_class") in (None, "TokenizersBackend"):
            tok["tokenizer_class"] = TOKENIZER_CLASS
        for key in _TRANSFORMERS5_TOKENIZER_KEYS:
            tok.pop(key, None)
        atomic_write_json(tok_path, tok)


def copy_tokenizer(source: str | Path, dest: str | Path) -> list[str]:
    """Copy tokenizer and generation-config files from `source` to `dest`; returns their names."""
    copied = []
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        src = Path(source) / name
        if src.is_file():
            shutil.copy2(src, Path(dest) / name)
            copied.append(name)
    return copied


def write_llama(
    model: LlamaForCausalLM,
    dest: str | Path,
    *,
    source: str | Path | None = None,
    dtype: str | torch.dtype | None = "bfloat16",
    record: dict[str, Any] | None = None,
) -> None:
    """Write `model` into an existing folder (not atomic; see `save_llama`).

    The config always carries an explicit `head_dim` and `architectures`; tokenizer and
    generation config are copied from `source` when given.
    """
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dest = Path(dest)
    cfg = model.config
    cfg.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    cfg.architectures = ["LlamaForCausalLM"]
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    torch_dtype = resolve_dtype(dtype) if dtype else next(model.parameters()).dtype
    orig = next(model.parameters()).dtype
    if torch_dtype != orig:
        model = model.to(torch_dtype)
    try:
        with torch.no_grad():
            model.save_pretrained(str(dest), safe_serialization=True, max_shard_size="2GB")
    finally:
        if torch_dtype != orig:
            model.to(orig)
    copied = copy_tokenizer(source, dest) if source is not None else []
    if "generation_config.json" not in copied and model.generation_config is not None:
        model.generation_config.save_pretrained(str(dest))
    make_compatible(dest)
    atomic_write_json(dest / PROVENANCE, record or provenance(source))


def save_llama(
    model: LlamaForCausalLM,
    out: str | Path,
    *,
    source: str | Path | None = None,
    dtype: str | torch.dtype | None = "bfloat16",
    record: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Atomically save a clean HF checkpoint (safetensors, config, tokenizer, provenance)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_llama(model, tmp, source=source, dtype=dtype, record=record)
    return Path(out)


def load_tokenizer(path: str | Path):
    """The tokenizer saved beside a checkpoint (fast tokenizers only, no remote code)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        raise InputError(
            f"{path} has no tokenizer files", fix="copy tokenizer.json beside config.json"
        )
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
