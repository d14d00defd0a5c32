"""Width and depth pruning of a checkpoint folder tensor by tensor, without loading the model.

Given the plan and the kept units (`units.choose_units`, from the scores), every tensor of
the pruned model is one slice of one source tensor: it is read (`stream.TensorReader`), sliced
by the same `units.Slicer` the in-memory path uses, cast to the checkpoint's dtype and
appended to its shard (`stream.ShardedWriter`). Peak memory: the largest source tensor and its
slice (the embedding) plus a constant, whatever the number of layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minitron_deploy.compress.plan import PrunePlan
from minitron_deploy.compress.units import Slicer, pruned_config
from minitron_deploy.model.io import compat_config, copy_tokenizer, llama_config, make_compatible
from minitron_deploy.model.stream import ShardedWriter, TensorReader, check_layout, llama_specs


def write_pruned_config(
    raw: dict[str, Any], plan: PrunePlan, keep_layers: list[int], dest: Path, dtype: str
) -> Any:
    """Write the pruned model's config.json (as `write_llama` writes a model's) into `dest`."""
    nc = pruned_config(llama_config(raw), plan, keep_layers)
    nc.architectures = ["LlamaForCausalLM"]
    nc.dtype = dtype
    nc.save_pretrained(str(dest))
    return nc


def prune_files(
    model_dir: str | Path,
    dest: str | Path,
    plan: PrunePlan,
    kept: dict[str, Any],
    raw: dict[str, Any],
    dtype: str,
) -> list[str]:
    """Write the pruned checkpoint's weights, config, tokenizer and generation config.

    Args:
        model_dir: the source checkpoint.
        dest: an existing empty folder.
        plan: the pruning plan.
        kept: the kept units (`choose_units`).
        raw: the source's config dict.
        dtype: torch dtype name of the written weights (the source's).

    Returns:
        The weight file names.
    """
    import torch
    from transformers import GenerationConfig

    dest = Path(dest)
    reader = TensorReader(model_dir)
    check_layout(reader, raw)
    slicer = Slicer(plan, kept)
    target = compat_config({**raw, **plan.target_shape})
    specs = llama_specs(target, dtype)
    source_of = {slicer.name(n): n for n in reader.names()}
    writer = ShardedWriter(dest, specs)
    for spec in specs:
        src = source_of[spec.name]
        w = slicer.slice(src, reader.get(src)).to(getattr(torch, dtype))
        writer.write(spec.name, w)
        del w
    files = writer.close()
    nc = write_pruned_config(raw, plan, kept["layers"], dest, dtype)
    if "generation_config.json" not in copy_tokenizer(model_dir, dest):
        GenerationConfig.from_model_config(nc).save_pretrained(str(dest))
    make_compatible(dest)
    return files
