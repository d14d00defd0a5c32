"""Homogeneous width and depth pruning of a Hugging Face Llama model.

Width: every layer keeps the same numbers of embedding channels, query heads, KV groups and MLP
neurons (TensorRT-LLM cannot load per-layer sizes), chosen per layer by importance (or at
random, for baselines). head_dim never changes; query heads are pruned equally inside every KV
group, so query head i still reads KV head i // (heads / kv_heads). Depth: an explicit list of
layers, or `num_layers` picked by a layer metric (default: the contiguous block whose removal
hurts validation loss least, Minitron P2).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minitron_deploy.errors import InputError
from minitron_deploy.model.shapes import LlamaShape

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

PRUNING_FILE = "pruning.json"


def parse_layers(spec: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """'16-31' or '1,3,5-7' (or a list) -> sorted unique layer indices."""
    if isinstance(spec, list | tuple):
        return tuple(sorted({int(x) for x in spec}))
    out: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError as e:
            raise InputError(
                f"bad layer list {spec!r}", where="drop_layers", fix="write e.g. 16-31 or 1,3,5-7"
            ) from e
    return tuple(sorted(out))


class PruneConfig(BaseModel):
    """Target sizes (None = keep the source size) and how to choose what to keep."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int | None = Field(None, gt=0, description="embedding channels to keep")
    intermediate_size: int | None = Field(None, gt=0, description="MLP neurons to keep per layer")
    num_attention_heads: int | None = Field(None, gt=0, description="query heads to keep")
    num_key_value_heads: int | None = Field(
        None, gt=0, description="KV groups to keep (whole groups dropped by group score)"
    )
    num_layers: int | None = Field(None, gt=0, description="layers to keep, chosen by layer_metric")
    drop_layers: tuple[int, ...] | None = Field(
        None, description="explicit layer indices to drop (list or '16-31,40' ranges)"
    )
    layer_metric: Literal["block_loss", "single_loss", "block_importance"] = Field(
        "block_loss",
        description="depth choice for num_layers: block_loss = contiguous block whose removal "
        "hurts validation loss least (P2); single_loss = individually least harmful layers; "
        "block_importance = lowest BI layers (reference code)",
    )
    selection: Literal["importance", "random"] = Field(
        "importance", description="keep the most important units, or random ones (a baseline)"
    )
    seed: int = Field(0, description="seed of the random selection")
    val_samples: int = Field(
        16, gt=0, description="validation sequences for loss-based layer ranking (block_loss)"
    )
    val_seq_len: int = Field(256, gt=1, description="tokens per validation sequence for ranking")

    @field_validator("drop_layers", mode="before")
    @classmethod
    def _parse_drop(cls, v: Any) -> Any:
        return None if v is None else parse_layers(v)

    @model_validator(mode="after")
    def _one_depth_option(self) -> PruneConfig:
        if self.num_layers is not None and self.drop_layers is not None:
            raise ValueError("give num_layers or drop_layers, not both")
        return self


def resolve_targets(config: Any, cfg: PruneConfig) -> dict[str, int]:
    """Check `cfg` against a source config; return the target sizes (before depth choice).

    Raises:
        InputError: a target larger than the source, heads not divisible by KV groups, more
            query heads per group than the source has, unknown layer indices.
    """
    src = LlamaShape.from_config(config)
    per_group = src.num_attention_heads // src.num_key_value_heads
    kv = cfg.num_key_value_heads or src.num_key_value_heads
    heads = cfg.num_attention_heads or kv * per_group
    t = {
        "hidden_size": cfg.hidden_size or src.hidden_size,
        "intermediate_size": cfg.intermediate_size or src.intermediate_size,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
    }
    for k, v in t.items():
        if v > getattr(src, k):
            raise InputError(
                f"target {k}={v} is larger than the source's {getattr(src, k)}",
                fix="pruning only shrinks; pick a smaller target",
            )
    if heads % kv:
        raise InputError(
            f"num_attention_heads={heads} is not divisible by num_key_value_heads={kv}",
            fix=f"use a multiple of {kv} (every KV group keeps the same number of heads)",
        )
    if heads // kv > per_group:
        raise InputError(
            f"{heads} heads over {kv} KV groups needs {heads // kv} heads per group, but the "
            f"source has {per_group}",
            fix=f"use at most {kv * per_group} heads, or keep more KV groups",
        )
    if t["hidden_size"] % heads:
        # transformers 5 LlamaConfig refuses this even with an explicit head_dim, so the
        # output would not load with stock from_pretrained.
        raise InputError(
            f"hidden_size={t['hidden_size']} is not divisible by num_attention_heads={heads}; "
            "transformers' LlamaConfig refuses such a checkpoint even with explicit head_dim",
            fix=f"use a hidden_size that is a multiple of {heads}",
        )
    n = src.num_hidden_layers
    if cfg.num_layers is not None and cfg.num_layers > n:
        raise InputError(f"num_layers={cfg.num_layers} is larger than the source's {n}")
    if cfg.drop_layers is not None:
        bad = [i for i in cfg.drop_layers if not 0 <= i < n]
        if bad:
            raise InputError(f"unknown layer indices {bad}", fix=f"layers are numbered 0..{n - 1}")
        if len(cfg.drop_layers) >= n:
            raise InputError("drop_layers would remove every layer", fix="keep at least one")
    return t


def needs(cfg: PruneConfig, config: Any) -> tuple[bool, bool]:
    """(width needs importance scores, depth needs a layer metric)."""
    t = resolve_targets(config, cfg)
    src = LlamaShape.from_config(config)
    width = any(t[k] != getattr(src, k) for k in t)
    depth = cfg.num_layers is not None and cfg.num_layers < src.num_hidden_layers
    return width and cfg.selection == "importance", depth and cfg.selection == "importance"


def choose_drop_layers(
    model: LlamaForCausalLM,
    scores: dict[str, torch.Tensor] | None,
    cfg: PruneConfig,
    val_batches: torch.Tensor | None = None,
    *,
    micro_batch: int = 8,
) -> list[int]:
    """The layer indices to remove, from `cfg.drop_layers` or `cfg.num_layers` + metric."""
    import torch

    from minitron_deploy.importance import layer_loss_ranking

    n = model.config.num_hidden_layers
    if cfg.drop_layers is not None:
        return list(cfg.drop_layers)
    if cfg.num_layers is None or cfg.num_layers == n:
        return []
    k = n - cfg.num_layers
    scores = scores or {}
    if cfg.selection == "random":
        g = torch.Generator().manual_seed(cfg.seed + 7)
        return sorted(torch.randperm(n, generator=g)[:k].tolist())
    if cfg.layer_metric == "block_importance":
        if "block_importance" not in scores:
            raise InputError("layer_metric block_importance needs importance scores (--scores)")
        return sorted(scores["block_importance"].argsort()[:k].tolist())
    key = f"layer_loss_drop{k if cfg.layer_metric == 'block_loss' else 1}"
    if key not in scores:
        if val_batches is None:
            raise InputError(
                f"layer_metric {cfg.layer_metric} needs validation losses ({key}) in the scores "
                "or validation data",
                fix="pass --data SRC (or compute scores with --layer-loss-blocks), or use "
                "--layer-metric block_importance",
            )
        k_block = int(key.removeprefix("layer_loss_drop"))
        scores = layer_loss_ranking(model, val_batches, (k_block,), micro_batch)
    losses = scores[key]
    if cfg.layer_metric == "block_loss":
        start = int(losses.argmin())
        return list(range(start, start + k))
    return sorted(losses.argsort()[:k].tolist())


def _top(score: torch.Tensor, k: int, gen: torch.Generator | None) -> torch.Tensor:
    """Sorted indices of the k largest entries of a 1-D score (random k when gen is set)."""
    import torch

    if gen is not None:
        return torch.randperm(score.numel(), generator=gen)[:k].sort().values
    return torch.topk(score.float(), k, sorted=False).indices.sort().values


def _score(scores: dict[str, torch.Tensor] | None, key: str, shape: tuple[int, ...]):
    import torch

    if scores and key in scores:
        return scores[key]
    return torch.zeros(shape)  # only reached when the axis is unchanged or selection is random


def prune_model(
    model: LlamaForCausalLM,
    scores: dict[str, torch.Tensor] | None,
    cfg: PruneConfig,
    val_batches: torch.Tensor | None = None,
    *,
    micro_batch: int = 8,
) -> tuple[LlamaForCausalLM, dict[str, Any]]:
    """A new, smaller `LlamaForCausalLM` sliced from `model` (which is left unchanged).

    Args:
        model: the source model.
        scores: output of `importance.compute_importance` (or `load_scores`); may be None when
            nothing is chosen by importance (explicit drop_layers, unchanged widths, random).
        cfg: targets and selection.
        val_batches: validation token ids, for loss-based layer metrics without stored losses.
        micro_batch: sequences per forward call of that ranking.

    Returns:
        (pruned model in the source dtype, record with kept indices per axis and shapes).
    """
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.importance import check_scores

    c = model.config
    t = resolve_targets(c, cfg)
    need_width, _ = needs(cfg, c)
    if need_width and not scores:
        raise InputError("width pruning by importance needs scores", fix="pass --scores SCORES")
    if scores:
        check_scores(scores, c)
    src = LlamaShape.from_config(c)
    n, nh, nkv, hd = (
        src.num_hidden_layers,
        src.num_attention_heads,
        src.num_key_value_heads,
        src.head_dim,
    )
    per_src, per_t = nh // nkv, t["num_attention_heads"] // t["num_key_value_heads"]
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.selection == "random" else None

    drop = set(choose_drop_layers(model, scores, cfg, val_batches, micro_batch=micro_batch))
    keep_layers = [i for i in range(n) if i not in drop]
    hid = _top(_score(scores, "hidden", (src.hidden_size,)), t["hidden_size"], gen)
    head_s = _score(scores, "head", (n, nh))
    kv_s = _score(scores, "kv_group", (n, nkv))
    mlp_s = _score(scores, "mlp", (n, src.intermediate_size))
    kept: dict[str, Any] = {"layers": keep_layers, "hidden": hid.tolist()}
    kept.update(kv_groups=[], heads=[], mlp=[])
    sd = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    ar = torch.arange(hd)
    for j, i in enumerate(keep_layers):
        groups = _top(kv_s[i], t["num_key_value_heads"], gen)
        heads = torch.cat(
            [g * per_src + _top(head_s[i].view(nkv, per_src)[g], per_t, gen) for g in groups]
        )
        neurons = _top(mlp_s[i], t["intermediate_size"], gen)
        kept["kv_groups"].append(groups.tolist())
        kept["heads"].append(heads.tolist())
        kept["mlp"].append(neurons.tolist())
        q = (heads[:, None] * hd + ar).flatten()
        kvc = (groups[:, None] * hd + ar).flatten()
        rows = {"q_proj": q, "k_proj": kvc, "v_proj": kvc, "o_proj": hid}
        rows.update(gate_proj=neurons, up_proj=neurons, down_proj=hid)
        cols = {"q_proj": hid, "k_proj": hid, "v_proj": hid, "o_proj": q}
        cols.update(gate_proj=hid, up_proj=hid, down_proj=neurons)
        pre, npre = f"model.layers.{i}.", f"model.layers.{j}."
        for name, w in sd.items():
            if not name.startswith(pre):
                continue
            rest = name[len(pre) :]
            mod, kind = rest.split(".")[-2], rest.split(".")[-1]
            if mod in rows and kind == "weight":
                w = w.index_select(0, rows[mod]).index_select(1, cols[mod])
            elif mod in rows:  # bias
                w = w.index_select(0, rows[mod])
            else:  # RMSNorm weights
                w = w.index_select(0, hid)
            new[npre + rest] = w.clone()
    new["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"].index_select(1, hid).clone()
    new["model.norm.weight"] = sd["model.norm.weight"].index_select(0, hid).clone()
    tied = bool(getattr(c, "tie_word_embeddings", False))
    new["lm_head.weight"] = (
        new["model.embed_tokens.weight"]
        if tied
        else sd["lm_head.weight"].index_select(1, hid).clone()
    )

    nc = copy.deepcopy(c)
    nc.hidden_size, nc.intermediate_size = t["hidden_size"], t["intermediate_size"]
    nc.num_attention_heads, nc.num_key_value_heads = (
        t["num_attention_heads"],
        t["num_key_value_heads"],
    )
    nc.num_hidden_layers, nc.head_dim = len(keep_layers), hd
    if getattr(nc, "layer_types", None):
        nc.layer_types = [c.layer_types[i] for i in keep_layers]
    dtype = next(model.parameters()).dtype
    out = LlamaForCausalLM(nc).to(dtype)
    missing, unexpected = out.load_state_dict(new, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:  # a bug, not a user error
        raise RuntimeError(
            f"pruned state dict mismatch: missing {missing}, unexpected {unexpected}"
        )
    if tied:
        out.tie_weights()
    out.eval()
    dst = LlamaShape.from_config(nc)
    record = {
        "selection": cfg.selection,
        "seed": cfg.seed if cfg.selection == "random" else None,
        "layer_metric": cfg.layer_metric if cfg.num_layers is not None else None,
        "dropped_layers": sorted(drop),
        "config": cfg.model_dump(mode="json"),
        "source_shape": src.as_dict(),
        "target_shape": dst.as_dict(),
        "params_before": src.num_parameters,
        "params_after": dst.num_parameters,
        "kept": kept,
    }
    return out, record


def prune_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    cfg: PruneConfig,
    scores_path: str | Path | None = None,
    val_data: str | None = None,
    *,
    micro_batch: int = 8,
    overwrite: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Prune a checkpoint folder and write the result (atomically) with `pruning.json`.

    Everything that can be checked is checked before any output exists, so bad input leaves no
    output folder behind.

    Args:
        model_dir: source HF Llama checkpoint.
        out_dir: destination folder (must not exist unless `overwrite`).
        cfg: targets and selection.
        scores_path: folder or file written by `importance.save_scores`.
        val_data: data source for loss-based layer choice (its validation split is used;
            `cfg.val_samples` x `cfg.val_seq_len` tokens).
        micro_batch: sequences per forward call.
        overwrite: replace an existing `out_dir`.
        command: the command line recorded in the provenance.

    Returns:
        The pruning record (also written to `out_dir/pruning.json`).
    """
    from minitron_deploy.data import token_sequences
    from minitron_deploy.fsutil import (
        atomic_dir,
        atomic_write_json,
        check_output_dir,
        sha256_file,
        sha256_tree,
    )
    from minitron_deploy.importance import SCORES_FILE, check_scores, load_scores
    from minitron_deploy.model.io import (
        PROVENANCE,
        load_config,
        load_llama,
        load_tokenizer,
        provenance,
        read_config,
        resolve_dtype,
        write_llama,
    )

    raw = read_config(model_dir)
    check_output_dir(out_dir, overwrite=overwrite)  # before loading anything
    config = load_config(model_dir)
    need_width, need_depth = needs(cfg, config)
    scores, scores_meta, scores_hash = None, None, None
    if scores_path is not None:
        scores, scores_meta = load_scores(scores_path)
        check_scores(scores, config)
        p = Path(scores_path)
        scores_hash = sha256_file(p / SCORES_FILE if p.is_dir() else p)
    if need_width and scores is None:
        raise InputError(
            "width pruning by importance needs importance scores",
            fix="pass --scores SCORES (from `minitron-deploy importance`), or --random",
        )
    model = load_llama(model_dir, dtype="float32")
    val = None
    if need_depth and cfg.layer_metric != "block_importance" and val_data is not None:
        tok = load_tokenizer(model_dir)
        val = token_sequences(
            tok,
            val_data,
            split="validation",
            num_samples=cfg.val_samples,
            seq_len=cfg.val_seq_len,
            seed=cfg.seed,
        )
    pruned, record = prune_model(model, scores, cfg, val, micro_batch=micro_batch)
    record = {
        "source": {"path": str(model_dir), "sha256": sha256_tree(model_dir, exclude=(PROVENANCE,))},
        "scores": {"path": str(scores_path), "sha256": scores_hash, "meta": scores_meta}
        if scores_path
        else None,
        "val_data": val_data if val is not None else None,
        **record,
    }
    src_dtype = resolve_dtype("auto", raw)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        prov = provenance(
            model_dir,
            command,
            extra={"pruning": {k: record[k] for k in ("target_shape", "dropped_layers")}},
        )
        write_llama(pruned, tmp, source=model_dir, dtype=src_dtype, record=prov)
        atomic_write_json(Path(tmp) / PRUNING_FILE, record)
    return record
