"""Hugging Face BF16 export (the primary artifact) and the raw-tensor reader other formats share.

Writer: a clean `LlamaForCausalLM` checkpoint in bf16 safetensors with explicit `head_dim`,
`architectures`, tokenizer, generation config and provenance (via `model.io`).
Reader: stock transformers (`LlamaForCausalLM.from_pretrained`), which is what users run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.errors import InputError
from minitron_deploy.export.format import ExportFormat, ExportSettings
from minitron_deploy.fsutil import atomic_write_json
from minitron_deploy.model.io import (
    PROVENANCE,
    copy_tokenizer,
    llama_config,
    make_compatible,
    provenance,
    read_config,
    weight_files,
)
from minitron_deploy.model.shapes import LINEARS, transformers_rope
from minitron_deploy.model.stream import ShardedWriter, TensorReader, check_layout, llama_specs

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.data.shards import Split


def expected_tensors(cfg: dict[str, Any]) -> list[str]:
    """Every tensor name a Llama checkpoint with this config must hold (lm_head unless tied)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.get("tie_word_embeddings", False):
        names.append("lm_head.weight")
    for i in range(int(cfg["num_hidden_layers"])):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        names += [f"{p}{lin}.weight" for lin in LINEARS]
    return names


def check_complete(model_dir: str | Path) -> dict[str, Any]:
    """The config dict of an HF Llama checkpoint whose files hold every expected tensor.

    Reads only the safetensors headers (cheap for any model size).

    Raises:
        InputError: bad folder/config/weights (see `model.io`), or tensors are missing.
    """
    from safetensors import safe_open

    cfg = read_config(model_dir)
    names: set[str] = set()
    for f in weight_files(model_dir):
        with safe_open(str(f), framework="pt") as sf:
            names.update(sf.keys())
    missing = [n for n in expected_tensors(cfg) if n not in names]
    if missing:
        raise InputError(
            f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}",
            where=str(model_dir),
            fix="the checkpoint is incomplete or its config does not match its weights",
        )
    return cfg


def read_hf_tensors(model_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, every tensor as stored) of an HF Llama checkpoint, checked for completeness.

    Raises:
        InputError: see `check_complete`.
    """
    from safetensors import safe_open

    cfg = check_complete(model_dir)
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(model_dir):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():  # noqa: SIM118 - safe_open is not a dict
                tensors[k] = sf.get_tensor(k)
    return cfg, tensors


def export_hf(
    model_dir: str | Path, dest: str | Path, *, record: dict[str, Any] | None = None
) -> list[str]:
    """Write `model_dir` as a clean bf16 HF checkpoint into the existing folder `dest`, tensor
    by tensor (`stream_hf`: memory is the largest tensor, not the model).

    Returns:
        The names of the files written.
    """

    return stream_hf(
        model_dir, dest, record or provenance(model_dir, extra={"export": {"format": "hf"}})
    )


def source_reader(model_dir: str | Path) -> tuple[dict[str, Any], TensorReader]:
    """(config dict, reader) of a source checkpoint whose tensors match its config."""
    cfg = read_config(model_dir)
    reader = TensorReader(model_dir)
    check_layout(reader, cfg)
    return cfg, reader


def write_hf_config(cfg: dict[str, Any], dest: Path, dtype: str = "bfloat16") -> Any:
    """config.json as `model.io.write_llama` writes it (explicit head_dim, architectures, no
    quantization_config), for weights in `dtype`."""
    config = llama_config(cfg)
    config.head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = dtype
    config.save_pretrained(str(dest))
    return config


def stream_hf(model_dir: str | Path, dest: str | Path, record: dict[str, Any]) -> list[str]:
    """Write `model_dir` as a clean bf16 HF checkpoint into the existing folder `dest`, one
    tensor at a time (5 GB shards); returns the names of the files written."""
    import torch
    from transformers import GenerationConfig

    dest = Path(dest)
    cfg, reader = source_reader(model_dir)
    specs = llama_specs(cfg, "bfloat16")
    writer = ShardedWriter(dest, specs)
    for s in specs:
        writer.write(s.name, reader.get(s.name).to(torch.bfloat16))
    writer.close()
    config = write_hf_config(cfg, dest)
    if "generation_config.json" not in copy_tokenizer(model_dir, dest):
        GenerationConfig.from_model_config(config).save_pretrained(str(dest))
    make_compatible(dest)
    atomic_write_json(dest / PROVENANCE, record)
    return sorted(p.name for p in dest.iterdir())


def load_hf(path: str | Path, dtype: str = "float32") -> LlamaForCausalLM:
    """Load an exported HF checkpoint with stock transformers, as a user would."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=False
    )
    return model.eval()


def logits_of(model: LlamaForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    """Float32 logits [batch, seq, vocab] of a full forward without cache."""
    import torch

    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits.float()


def model_logits(model: LlamaForCausalLM):
    """A logits function of a torch model (for the read-back check)."""
    return lambda tokens: logits_of(model, tokens)


def write(
    src: Path,
    dest: Path,
    settings: ExportSettings,
    calibration: Split | None,
    record: dict[str, Any],
) -> dict[str, Any]:
    """The `hf` writer of the export table."""
    return {"files": export_hf(src, dest, record=record)}


FORMAT = ExportFormat(
    name="hf",
    help="Hugging Face checkpoint, bf16 safetensors (TensorRT-LLM PyTorch backend, vLLM, ...)",
    write=write,
    read=lambda path: model_logits(load_hf(path)),
    check=lambda dtype: "exact",
    hf_model=True,
    rope=transformers_rope,
)
