"""Downstream tasks through EleutherAI's lm-evaluation-harness (`lm-eval`), on any checkpoint
the project writes: an HF folder (loaded with `load_llama`) or an HF-FP8 export (loaded with the
project's FP8 reader, W8A8 as served).

A task spec is one of:
- an offline task of this project (`offline_tasks.TASKS`, generated once, no download);
- a YAML file path, or a folder of task YAMLs (with their JSONL data: local, offline);
- a name in lm-eval's registry (hellaswag, winogrande, mmlu, ...), whose data set comes from
  the Hugging Face hub on first use: refused at once (bad input, exit 2) when
  `HF_HUB_OFFLINE`/`HF_DATASETS_OFFLINE` is set. A download that fails later (the network, the
  hub, `datasets` / `huggingface_hub`) is not the input's fault: `StageError`, exit 1.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minitron_deploy.engines.base import is_fp8_checkpoint
from minitron_deploy.errors import DependencyError, InputError, StageError
from minitron_deploy.evaluation.offline_tasks import TASKS, offline_tasks_dir
from minitron_deploy.export.hf_fp8 import load_fp8_checkpoint
from minitron_deploy.hardware import compute_dtype
from minitron_deploy.model.io import load_llama, load_tokenizer, read_config

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

LOCAL_LOADERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}
_NETWORK_MODULES = ("datasets", "huggingface_hub", "requests", "urllib3", "httpx", "fsspec")


def _lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise DependencyError(
            f"downstream evaluation needs lm-evaluation-harness ({e})",
            fix="pip install 'lm-eval==0.4.13' 'numpy<2' 'pyarrow<26'",
        ) from e
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return TaskManager


def offline() -> bool:
    """Whether the user has turned hub access off."""
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _local_alternative() -> str:
    return (
        f"run an offline task ({', '.join(TASKS)}) or your own YAML + JSONL task "
        "(--tasks path/to/task.yaml)"
    )


def resolve_tasks(specs: list[str]) -> tuple[Any, list[str]]:
    """(lm-eval TaskManager, task names or YAML paths to run) for `specs`.

    Raises:
        InputError: an unknown task (with close names), or a registry task needing a download
            while offline (naming the local alternative).
    """

    TaskManager = _lm_eval()
    if not specs:
        raise InputError("no tasks given", fix=f"e.g. --tasks {','.join(TASKS)}")
    include: list[str] = []
    names: list[str] = []
    folders: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if spec in TASKS:
            d = str(offline_tasks_dir())
            if d not in include:
                include.append(d)
            names.append(spec)
        elif p.suffix in (".yaml", ".yml") and p.is_file():
            names.append(str(p.resolve()))
        elif p.is_dir():
            include.append(str(p.resolve()))
            folders.append(p.resolve())
        else:
            names.append(spec)
    tm = TaskManager(include_path=include or None, include_defaults=False)
    for folder in folders:
        mine = sorted(
            n
            for n, e in tm.task_index.items()
            if e.yaml_path and Path(e.yaml_path).resolve().is_relative_to(folder)
        )
        if not mine:
            raise InputError(f"no lm-eval task YAML in folder {folder}", where=str(folder))
        names += [n for n in mine if tm.task_index[n].kind.name != "TAG"] or mine
    unknown = [n for n in names if not n.endswith((".yaml", ".yml")) and n not in tm.all_tasks]
    if unknown:
        tm = TaskManager(include_path=include or None, include_defaults=True)
        still = [n for n in unknown if n not in tm.all_tasks]
        if still:
            close = difflib.get_close_matches(still[0], tm.all_tasks, n=5, cutoff=0.6)
            raise InputError(
                f"unknown task {still[0]!r}"
                + (f"; close names: {', '.join(close)}" if close else ""),
                fix=f"list names with `lm-eval ls tasks`, or {_local_alternative()}",
            )
        for n in unknown:
            _check_download(tm, n)
    return tm, names


def _needs_hub(cfg: dict) -> str | None:
    """The hub data set a registry task config loads, or None for local data."""
    if cfg.get("custom_dataset"):
        return None
    path = cfg.get("dataset_path")
    if not path or str(path) in LOCAL_LOADERS or Path(str(path)).exists():
        return None
    return str(path)


def _check_download(tm: Any, name: str) -> None:
    entry = tm.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    hub = _needs_hub(cfg) if isinstance(cfg, dict) else None
    if hub and offline():
        raise InputError(
            f"task {name!r} needs the data set {hub!r} from the Hugging Face hub, and hub "
            "access is off here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)",
            fix=_local_alternative(),
        )


def load_for_eval(model_dir: str | Path, dtype: str = "auto") -> tuple[LlamaForCausalLM, Any]:
    """(model, tokenizer) of an HF checkpoint or an HF-FP8 export (W8A8, as served).

    Raises:
        InputError: not a loadable Llama checkpoint.
    """

    read_config(model_dir)
    if is_fp8_checkpoint(model_dir):
        model = load_fp8_checkpoint(model_dir, dequantize=False)
    else:
        model = load_llama(model_dir, dtype=compute_dtype(dtype))
    return model.eval(), load_tokenizer(model_dir)


def _metrics(block: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in block.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else f"{metric} ({filt})"] = float(value)
    return out


def evaluate_tasks(
    model: LlamaForCausalLM,
    tokenizer: Any,
    specs: list[str],
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    resolved: tuple[Any, list[str]] | None = None,
    per_item: bool = False,
) -> dict[str, Any]:
    """Run tasks on an in-memory model with lm-eval's `simple_evaluate`.

    Args:
        per_item: also return each item's score (for paired comparisons of models on the
            same items: `minitron_deploy.stats.paired_bootstrap`).

    Returns:
        {"tasks": {name: {"metrics": {metric: value}, "samples": n, "num_fewshot": k,
         "items"?: {doc_id: {metric: value}}}}, "lm_eval": version, "limit": limit}.
    """
    import datasets
    import lm_eval
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    tm, names = resolved or resolve_tasks(specs)
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_length=int(getattr(model.config, "max_position_embeddings", 2048)),
        )
        res = simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            bootstrap_iters=0,
            task_manager=tm,
            log_samples=True,  # per item: how many choices (the chance level) and which right
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            verbosity="ERROR",
        )
    except Exception as e:
        if type(e).__module__.split(".")[0] in _NETWORK_MODULES or isinstance(
            e, (ConnectionError, TimeoutError)
        ):
            # The task names were resolved before the model loaded (unknown ones are exit 2
            # there); a failure here is the network's or a library's (exit 1).
            raise StageError(
                f"a task's data set could not be loaded: {type(e).__module__}."
                f"{type(e).__name__}: {str(e)[:300]}",
                fix="check the network and the hub (or retry), or " + _local_alternative(),
            ) from e
        raise
    finally:
        hf_logger.setLevel(level)
    tasks = {}
    for name, block in (res or {}).get("results", {}).items():
        n = (res.get("n-samples") or {}).get(name, {})
        output_type = ((res.get("configs") or {}).get(name) or {}).get("output_type")
        tasks[name] = {
            "metrics": _metrics(block),
            "samples": n.get("effective"),
            "num_fewshot": (res.get("n-shot") or {}).get(name),
            "output_type": output_type,
            **_item_counts((res.get("samples") or {}).get(name) or [], output_type),
        }
        if per_item:
            keys = set(tasks[name]["metrics"])
            tasks[name]["items"] = {
                str(x["doc_id"]): {k: float(v) for k, v in x.items() if k in keys}
                for x in (res.get("samples") or {}).get(name, [])
            }
    return {"tasks": tasks, "lm_eval": lm_eval.__version__, "limit": limit}


def _item_counts(samples: list[dict[str, Any]], output_type: str | None) -> dict[str, Any]:
    """From lm-eval's per-item records: `correct` (items right, per 0/1 metric such as acc) and
    `chance` (the score of guessing: the mean of 1/choices over the items of a multiple-choice
    task; 0 for a task with nothing to pick from, e.g. a last word or a generation)."""
    if not samples:
        return {}
    correct: dict[str, int] = {}
    for key in samples[0].get("metrics") or ():
        values = [s.get(key) for s in samples]
        if all(isinstance(v, (bool, int, float)) and float(v) in (0.0, 1.0) for v in values):
            correct[key] = int(sum(float(v) for v in values))
    if output_type == "multiple_choice":
        chance = sum(1.0 / max(len(s.get("arguments") or ()), 1) for s in samples) / len(samples)
    else:
        chance = 0.0
    return {"correct": correct, "chance": round(chance, 6)}


def results_markdown(results: dict[str, Any], title: str | None = None) -> str:
    """One row per task and metric."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| task | metric | value | items | shots |", "| --- | --- | ---: | ---: | ---: |"]
    for name, t in results["tasks"].items():
        for metric, value in t["metrics"].items():
            lines.append(
                f"| {name} | {metric} | {value:.4f} | {t.get('samples') or '-'} | "
                f"{t.get('num_fewshot') if t.get('num_fewshot') is not None else '-'} |"
            )
    return "\n".join(lines) + "\n"
