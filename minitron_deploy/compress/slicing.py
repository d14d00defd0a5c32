"""Homogeneous width and depth pruning of a Hugging Face Llama model.

Width: every layer keeps the same numbers of embedding channels, query heads, KV groups and MLP
neurons (TensorRT-LLM cannot load per-layer sizes), chosen per layer by importance (or at
random, for baselines). head_dim never changes; query heads are pruned equally inside every KV
group, so query head i still reads KV head i // (heads / kv_heads). Depth: an explicit list of
layers, or `num_layers` picked by a layer metric (`layers.py`; default: the contiguous block
whose removal hurts validation loss least, Minitron P2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.compress.config import PruneConfig
from minitron_deploy.compress.layers import DEPTH_METRICS, choose_drop_layers, planned_drop
from minitron_deploy.compress.plan import AXIS_SCORES, PrunePlan, plan_prune
from minitron_deploy.compress.scores import SCORES_FILE, check_scores, load_scores
from minitron_deploy.compress.stream_prune import prune_files
from minitron_deploy.compress.units import (
    Slicer,
    check_plan_scores,
    choose_units,
    pruned_config,
    pruning_record,
)
from minitron_deploy.data.refs import as_split, describe
from minitron_deploy.errors import InputError
from minitron_deploy.evaluation.harness import resolve_tasks
from minitron_deploy.fsutil import atomic_dir, atomic_write_json, check_output_dir, sha256_file
from minitron_deploy.hardware import native_autocast
from minitron_deploy.model.io import (
    PROVENANCE,
    load_llama,
    load_tokenizer,
    provenance,
    read_config,
    resolve_dtype,
    write_llama,
)

if TYPE_CHECKING:
    import torch
    from transformers import LlamaForCausalLM

    from minitron_deploy.data.refs import DataRef
    from minitron_deploy.data.shards import Split

PRUNING_FILE = "pruning.json"
__all__ = ["AXIS_SCORES", "PRUNING_FILE", "PrunePlan", "plan_prune", "prune_checkpoint"]


def prune_model(
    model: LlamaForCausalLM,
    scores: dict[str, torch.Tensor] | None,
    cfg: PruneConfig,
    val_batches: torch.Tensor | None = None,
    *,
    micro_batch: int = 8,
    progress: bool = False,
    tokenizer: Any = None,
    plan: PrunePlan | None = None,
) -> tuple[LlamaForCausalLM, dict[str, Any]]:
    """A new, smaller `LlamaForCausalLM` sliced from `model` (which is left unchanged).

    Args:
        model: the source model.
        scores: output of `importance.compute_importance` (or `load_scores`); may be None when
            nothing is chosen by importance (explicit drop_layers, unchanged widths, random).
        cfg: targets and selection.
        val_batches: validation token ids, for loss-based layer metrics without stored losses.
        micro_batch: sequences per forward call of that ranking.
        progress: show a progress bar while ranking layers.
        tokenizer: the model's tokenizer (layer_metric task_accuracy runs a task).
        plan: the plan of this pruning when the caller made it (`plan_prune(config, cfg)`).

    Returns:
        (pruned model in the source dtype, record with kept indices per axis and shapes).
    """
    from transformers import LlamaForCausalLM

    c = model.config
    plan = plan or plan_prune(c, cfg)
    check_plan_scores(plan, scores)
    drop = choose_drop_layers(
        model,
        scores,
        cfg,
        val_batches,
        micro_batch=micro_batch,
        progress=progress,
        tokenizer=tokenizer,
    )
    kept = choose_units(plan, scores, drop)
    slicer = Slicer(plan, kept)
    new: dict[str, torch.Tensor] = {}
    for name, w in model.state_dict().items():
        if (dst := slicer.name(name)) is not None and name != "lm_head.weight":
            new[dst] = slicer.slice(name, w)
    tied = bool(getattr(c, "tie_word_embeddings", False))
    new["lm_head.weight"] = (
        new["model.embed_tokens.weight"]
        if tied
        else slicer.slice("lm_head.weight", model.state_dict()["lm_head.weight"])
    )
    nc = pruned_config(c, plan, kept["layers"])
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
    return out, pruning_record(plan, drop, kept)


def prune_checkpoint(
    model_dir: str | Path,
    out_dir: str | Path,
    cfg: PruneConfig,
    scores_path: str | Path | None = None,
    val_data: DataRef | Split | None = None,
    *,
    micro_batch: int = 8,
    overwrite: bool = False,
    command: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Prune a checkpoint folder and write the result (atomically) with `pruning.json`.

    Everything that can be checked is checked before any model loads, so bad input fails in a
    second and leaves no output folder behind.

    Args:
        model_dir: source HF Llama checkpoint.
        out_dir: destination folder (must not exist unless `overwrite`).
        cfg: targets and selection.
        scores_path: folder or file written by `scores.save_scores`.
        val_data: validation text for loss-based layer choice (`cfg.ranking_rows`): a
            prepared split, or a `DataRef` prepared only if layers are ranked here; not needed
            when the scores hold the loss ranking.
        micro_batch: sequences per forward call.
        overwrite: replace an existing `out_dir`.
        command: the command line recorded in the provenance.
        progress: show progress bars while ranking layers.

    Returns:
        The pruning record (also written to `out_dir/pruning.json`).
    """

    raw = read_config(model_dir)
    check_output_dir(out_dir, overwrite=overwrite)
    plan = plan_prune(raw, cfg)  # the one plan of this pruning: targets, depth, score keys
    need = plan.required_scores(with_depth=val_data is None)
    scores, scores_meta, scores_hash = None, None, None
    if scores_path is not None:
        scores, scores_meta = load_scores(scores_path)
        check_scores(scores, raw, need)
        p = Path(scores_path)
        scores_hash = sha256_file(p / SCORES_FILE if p.is_dir() else p)
    elif need:
        raise InputError(
            f"pruning by importance needs importance scores ({sorted(need)})",
            fix="pass --scores SCORES (from `minitron-deploy importance`), or --random",
        )
    # Loss rankings stored with the scores are reused; otherwise layers are ranked here. With
    # nothing to drop (num_layers = the source's) there is nothing to rank.
    depth_key = plan.depth_key
    rank_here = (
        depth_key is not None and cfg.ranks_layers_by_loss and not (scores and depth_key in scores)
    )
    if rank_here and val_data is None:
        raise InputError(
            f"layer_metric {cfg.layer_metric} needs validation text or scores with {depth_key}",
            fix="pass --data SRC, or scores from `importance --layer-loss-blocks`",
        )
    val_split = as_split(val_data, model_dir) if rank_here else None
    src_dtype = resolve_dtype("auto", raw)
    # Without a forward pass to decide the layers (ranked by loss or by a task here), pruning
    # streams tensor by tensor (`stream_prune`): nothing holds the model.
    drop = planned_drop(cfg, plan.source.num_hidden_layers, scores)
    pruned = None
    if drop is None:
        model = load_llama(model_dir, dtype="float32")
        val = None
        if val_split is not None:
            val = val_split.rows(cfg.ranking_rows[0], cfg.ranking_rows[1], seed=cfg.seed)
        tok = None
        if DEPTH_METRICS[cfg.layer_metric].reads == "task" and plan.drop_count:
            resolve_tasks([cfg.task_ranking[0]])  # an unknown task fails before any work
            tok = load_tokenizer(model_dir)
        with native_autocast():  # layer ranking in the device's native dtype; slicing is exact
            pruned, record = prune_model(
                model,
                scores,
                cfg,
                val,
                micro_batch=micro_batch,
                progress=progress,
                tokenizer=tok,
                plan=plan,
            )
        del model
    else:
        check_plan_scores(plan, scores)
        record = pruning_record(plan, drop, choose_units(plan, scores, drop))
    prov = provenance(
        model_dir,
        command,
        extra={"pruning": {k: record[k] for k in ("target_shape", "dropped_layers")}},
    )
    record = {
        "source": prov["source"],
        "scores": {"path": str(scores_path), "sha256": scores_hash, "meta": scores_meta}
        if scores_path
        else None,
        "val_data": describe(val_split),
        "streamed": pruned is None,
        **record,
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if pruned is None:
            dtype = str(src_dtype).replace("torch.", "")
            prune_files(model_dir, tmp, plan, record["kept"], raw, dtype)
            atomic_write_json(Path(tmp) / PROVENANCE, prov)
        else:
            write_llama(pruned, tmp, source=model_dir, dtype=src_dtype, record=prov)
        atomic_write_json(Path(tmp) / PRUNING_FILE, record)
    return record
