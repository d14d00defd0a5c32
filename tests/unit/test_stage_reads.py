"""Every setting of a node's config is read by its stage: a key that enters the artifact key but
is never read would change keys without changing outputs (the old `seed` bug).

The pipeline runs a profile that switches every feature on, with each node's config wrapped in
a recorder that notes every field read (also through methods and properties, and inside the
algorithm functions the config is passed to). For each stage, every field that is set (not
None, not empty) in some node must be read in some node.
"""

from __future__ import annotations

import functools
import textwrap

import pytest
from pydantic import BaseModel

pytestmark = pytest.mark.integration

PROFILE = """\
name: covering
source: builtin:tiny-llama
seed: 3
data: {calibration: builtin:pydoc-topics, training: builtin:pydoc-topics, val_fraction: 0.2,
       holdout: [builtin:licenses]}
importance: {num_samples: 8, seq_len: 32, micro_batch: 4, layer_loss_blocks: [2], val_samples: 4}
defaults:
  distill:
    steps: 2
    global_batch: 2
    micro_batch: 1
    seq_len: 32
    warmup_steps: 1
    eval_every: 1
    eval_samples: 2
    checkpoint_every: 1
    teacher_check: false
variants:
  - name: base
    export:
      formats: [hf, hf-fp8, trtllm-ckpt, onnx]
      tp_size: 2
      calib_samples: 4
      calib_seq_len: 32
      kv_cache_fp8: true
    package: {backend: torch, max_batch_size: 2}
  - name: width
    prune: {hidden_size: 64, intermediate_size: 128, num_attention_heads: 4}
    distill: {intermediate: true, embedding_loss: true, top_k: 20, ce_weight: 0.1,
              layer_map: [[-2, -2]], gradient_checkpointing: true}
    export: {formats: [hf], verify: false}
    package: {backend: trtllm, max_batch_size: 2}
  - name: depth
    prune: {num_layers: 3, layer_metric: block_loss, val_samples: 2, val_seq_len: 32}
    distill: {}
  - name: rand
    prune: {intermediate_size: 100, selection: random}
    bench: {enabled: false}
  - name: bytask
    prune: {num_layers: 4, layer_metric: task_accuracy, layer_task: minitron_cloze_code,
            layer_task_limit: 2}
    bench: {enabled: false}
  - name: found
    search: true
    distill: {steps: 1}
    bench: {enabled: false}
eval: {tasks: [minitron_cloze_code], limit: 2, num_fewshot: 0, batch_size: 2}
search: {budget: {max_params: 2.0e5, max_memory_gb: 1.0}, top_k: 1, steps: 2, val_samples: 2,
         val_seq_len: 32, max_candidates: 2,
         grid: {hidden_size: [64], intermediate_size: [128], num_layers: [5, 4], multiple: 16}}
bench: {engine: torch, isl_osl: "8/4", warmup: 1, repeats: 3, batch: [2, 3, 3]}
"""


class Recorder:
    """A read-only view of a pydantic model that records the paths of the fields read."""

    def __init__(self, obj: BaseModel, path: str, reads: set[str]):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name: str):
        obj = object.__getattribute__(self, "_obj")
        reads = object.__getattribute__(self, "_reads")
        if name in type(obj).model_fields:
            path = object.__getattribute__(self, "_path") + name
            reads.add(path)
            value = getattr(obj, name)
            return Recorder(value, path + ".", reads) if isinstance(value, BaseModel) else value
        attr = getattr(type(obj), name, None)
        if isinstance(attr, property):  # a property computed from fields reads them here
            return attr.fget(self)
        if callable(attr) and not name.startswith("model_"):
            return functools.partial(attr, self)  # methods read fields through the recorder
        return getattr(obj, name)  # model_dump() etc.: provenance records, not reads


def leaves(obj: BaseModel, path: str = "") -> set[str]:
    """Paths of the fields that hold a value (None and empty containers mean "not used")."""
    out = set()
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            out |= leaves(value, f"{path}{name}.")
        elif value is not None and value != {} and value != () and value != []:
            out.add(path + name)
    return out


def test_every_set_field_of_every_stage_is_read(tmp_path, monkeypatch):
    import minitron_deploy.pipeline.execute as execute
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    p = tmp_path / "covering.yaml"
    p.write_text(textwrap.dedent(PROFILE))
    pipe = Pipeline(load_profile(p), tmp_path / "wd", p)
    reads: dict[str, set[str]] = {}
    real_context = execute.StageContext

    def recording_context(node_id, config, *args, **kwargs):
        stage = pipe.by_id[node_id].stage
        return real_context(
            node_id, Recorder(config, "", reads.setdefault(stage, set())), *args, **kwargs
        )

    monkeypatch.setattr(execute, "StageContext", recording_context)
    record = pipe.run(progress=False)
    assert record["status"] == "ok", record.get("error")
    stages = {n.stage for n in pipe.nodes}
    assert stages == {
        "source",
        "data",
        "importance",
        "prune",
        "distill",
        "export",
        "package",
        "eval",
        "search",
        "bench",
    }
    unread = {}
    for stage in stages:
        fields = set().union(*(leaves(n.config) for n in pipe.nodes if n.stage == stage))
        if missing := fields - reads.get(stage, set()):
            unread[stage] = sorted(missing)
    assert not unread, f"settings that enter keys but are never read: {unread}"
    # The profile-wide settings reached the stages that use them.
    imp = next(s for s in record["stages"] if s["stage"] == "importance")
    assert imp["metrics"]["samples"] == 8
    scores = pipe.by_id["width/importance"]
    assert scores.config.validation is not None and scores.config.importance.seed == 3
