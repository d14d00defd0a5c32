"""Streaming paths (tensor by tensor, layer by layer) against the whole-model paths, on tiny
odd-shaped models: random checkpoints, safetensors writers, pruning, HF and TensorRT-LLM
exports and their layer-by-layer read-back."""

from __future__ import annotations

import json

import pytest


def _tensors(folder):
    """Every tensor of a checkpoint folder or file, by name."""
    from safetensors.torch import load_file

    from minitron_deploy.model.stream import TensorReader

    if folder.is_file():
        return load_file(str(folder))
    r = TensorReader(folder)
    return {n: load_file(str(r.files[n]))[n] for n in r.names()}


def _equal(a, b):
    import torch

    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def _config(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("transformers_version", None)
    return cfg


def test_writer_round_trip_and_shards(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from minitron_deploy.model.stream import (
        INDEX_FILE,
        SafetensorsWriter,
        ShardedWriter,
        TensorReader,
        spec_of,
    )

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(7, 5, generator=g).to(torch.bfloat16),
        "b": torch.randn(3, generator=g),
        "c": torch.randint(0, 9, (2, 3), generator=g),
        "d": torch.randn(11, 13, generator=g).to(torch.float16),
    }
    specs = [spec_of(k, str(v.dtype).removeprefix("torch."), v.shape) for k, v in tensors.items()]
    with SafetensorsWriter(tmp_path / "one.safetensors", specs) as w:
        for k, v in tensors.items():
            w.write(k, v)
    save_file(tensors, str(tmp_path / "ref.safetensors"))
    one, ref = tmp_path / "one.safetensors", tmp_path / "ref.safetensors"
    _equal(load_file(str(one)), load_file(str(ref)))
    # Declaration order is enforced: a wrong name, shape or dtype is a bug, caught at once.
    w = SafetensorsWriter(tmp_path / "bad.safetensors", specs)
    with pytest.raises(RuntimeError, match="declared"):
        w.write("b", tensors["b"])
    shards = tmp_path / "sharded"
    shards.mkdir()
    sw = ShardedWriter(shards, specs, max_shard_bytes=200)
    for k, v in tensors.items():
        sw.write(k, v)
    files = sw.close()
    assert INDEX_FILE in files and len(files) >= 3
    index = json.loads((shards / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(tensors)
    r = TensorReader(shards)
    _equal({k: r.get(k) for k in r.names()}, tensors)
    assert r.largest_bytes() == max(s.nbytes for s in specs)


def test_random_checkpoint_loads_and_is_seeded(tmp_path):
    import torch

    from minitron_deploy.export.hf import logits_of
    from minitron_deploy.model.io import load_llama, load_tokenizer
    from minitron_deploy.model.random_init import write_random_checkpoint
    from minitron_deploy.testing import TINY_DEFAULTS

    tiny = {k: TINY_DEFAULTS[k] for k in ("vocab_size", "hidden_size", "intermediate_size")}
    tiny.update(num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=16)
    a = write_random_checkpoint(
        "llama-3.1-8b", tmp_path / "a", overrides=tiny, max_shard_bytes=100_000
    )
    b = write_random_checkpoint("llama-3.1-8b", tmp_path / "b", overrides=tiny)
    assert len(a["files"]) > 2 and "model.safetensors.index.json" in a["files"]
    assert b["files"] == ["model.safetensors"]
    # The tensors do not depend on the shard layout; another seed changes every matrix.
    _equal(_tensors(tmp_path / "a"), _tensors(tmp_path / "b"))
    write_random_checkpoint("llama-3.1-8b", tmp_path / "c", overrides=tiny, seed=1)
    ta, tc = _tensors(tmp_path / "a"), _tensors(tmp_path / "c")
    assert all(not torch.equal(ta[k], tc[k]) for k in ta if ta[k].ndim == 2)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000.0
    assert cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "bfloat16"
    model = load_llama(tmp_path / "a", dtype="float32")  # strict: every tensor, right shapes
    tok = load_tokenizer(tmp_path / "a")
    ids = tok("def main(argv): return 0", return_tensors="pt").input_ids
    assert int(ids.max()) < cfg["vocab_size"]
    assert bool(logits_of(model, ids).isfinite().all())
    assert a["tokenizer"].startswith("a byte-level BPE")  # vocab 301 < SmolLM2's 49,152


def test_random_checkpoint_1b_shape_without_weights():
    """The published 1B config: 1.24B parameters with tied embeddings, GQA 32/8, head_dim 64."""
    from minitron_deploy.model.random_init import random_config
    from minitron_deploy.model.shapes import LlamaShape
    from minitron_deploy.model.stream import llama_specs

    cfg = random_config("llama-3.2-1b")
    s = LlamaShape.from_config(cfg)
    assert (s.num_attention_heads, s.num_key_value_heads, s.head_dim) == (32, 8, 64)
    assert s.tie_word_embeddings and s.vocab_size == 128256
    specs = llama_specs(cfg)
    assert sum(x.nbytes for x in specs) == 2 * s.num_parameters
    assert "lm_head.weight" not in {x.name for x in specs}


def test_fetch_random_unknown_shape_exits_2(tmp_path):
    from minitron_deploy.cli import main

    assert main(["fetch", "random:llama-9b", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def _scores(shape, seed=0):
    import torch

    from minitron_deploy.compress.metrics import score_shapes

    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v, generator=g) for k, v in score_shapes(shape).items()}


CASES = {
    "width+depth": dict(
        hidden_size=72, intermediate_size=150, num_attention_heads=4, drop_layers=(1, 3)
    ),
    "kv+block_importance": dict(
        num_key_value_heads=1, num_layers=3, layer_metric="block_importance"
    ),
    "random": dict(hidden_size=48, intermediate_size=101, num_layers=4, selection="random"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tied", [False, True])
def test_streaming_prune_equals_in_memory(case, tied, tiny_ckpt, tiny_tied_ckpt, tmp_path):
    """prune_checkpoint streams (no forward decides the layers) and writes exactly the tensors
    and config of prune_model on the loaded model."""
    from minitron_deploy.compress.config import PruneConfig
    from minitron_deploy.compress.scores import save_scores
    from minitron_deploy.compress.slicing import prune_checkpoint, prune_model
    from minitron_deploy.model.io import load_llama, read_config, resolve_dtype, write_llama
    from minitron_deploy.model.shapes import LlamaShape

    src = tiny_tied_ckpt if tied else tiny_ckpt
    raw = read_config(src)
    scores = _scores(LlamaShape.from_config(raw))
    save_scores(scores, tmp_path / "scores", {})
    cfg = PruneConfig(**CASES[case])
    rec = prune_checkpoint(src, tmp_path / "streamed", cfg, scores_path=tmp_path / "scores")
    assert rec["streamed"] is True
    model, ref_rec = prune_model(load_llama(src, dtype="float32"), scores, cfg)
    write_llama(model, tmp_path / "ref", source=src, dtype=resolve_dtype("auto", raw))
    _equal(_tensors(tmp_path / "streamed"), _tensors(tmp_path / "ref"))
    assert _config(tmp_path / "streamed") == _config(tmp_path / "ref")
    assert rec["kept"] == ref_rec["kept"] and rec["target_shape"] == ref_rec["target_shape"]
    assert rec["dropped_layers"] == ref_rec["dropped_layers"]
    load_llama(tmp_path / "streamed")  # stock transformers, strict


def test_prune_plan_computed_once(tiny_ckpt, tmp_path, monkeypatch):
    """One prune resolves its targets once (the PrunePlan), however many steps read them."""
    from minitron_deploy.compress import plan as plan_mod
    from minitron_deploy.compress import slicing
    from minitron_deploy.compress.config import PruneConfig

    calls = []
    real = plan_mod.resolve_targets
    monkeypatch.setattr(plan_mod, "resolve_targets", lambda *a: calls.append(1) or real(*a))
    slicing.prune_checkpoint(
        tiny_ckpt,
        tmp_path / "p",
        PruneConfig(hidden_size=48, drop_layers=(0,), selection="random"),
    )
    assert len(calls) == 1


def test_streaming_hf_export_equals_in_memory(tiny_ckpt, tiny_tied_ckpt, tmp_path):
    import torch

    from minitron_deploy.export.hf import export_hf
    from minitron_deploy.model.io import load_llama, write_llama

    for name, src in (("untied", tiny_ckpt), ("tied", tiny_tied_ckpt)):
        (tmp_path / name).mkdir()
        export_hf(src, tmp_path / name, record={})
        write_llama(load_llama(src, dtype="auto"), tmp_path / f"{name}-ref", source=src)
        got, ref = _tensors(tmp_path / name), _tensors(tmp_path / f"{name}-ref")
        _equal(got, ref)
        assert all(t.dtype == torch.bfloat16 for t in got.values())
        assert _config(tmp_path / name) == _config(tmp_path / f"{name}-ref")


@pytest.mark.parametrize("tp", [1, 2])
def test_streaming_trtllm_equals_in_memory(tp, tiny_ckpt, tiny_tied_ckpt, tmp_path):
    """Each rank file holds the tensors write_trtllm_checkpoint writes; TrtllmTensors gives
    back what read_trtllm_checkpoint does, one tensor at a time."""
    import torch

    from minitron_deploy.export.hf import read_hf_tensors
    from minitron_deploy.export.trtllm_ckpt import (
        TrtllmTensors,
        read_trtllm_checkpoint,
        stream_trtllm,
        write_trtllm_checkpoint,
    )

    for name, src in (("untied", tiny_ckpt), ("tied", tiny_tied_ckpt)):
        a, b = tmp_path / f"{name}-s", tmp_path / f"{name}-m"
        a.mkdir(), b.mkdir()
        stream_trtllm(src, a, tp, record={})
        cfg, t = read_hf_tensors(src)
        write_trtllm_checkpoint(cfg, t, b, tp=tp)
        assert json.loads((a / "config.json").read_text()) == json.loads(
            (b / "config.json").read_text()
        )
        for r in range(tp):
            f = f"rank{r}.safetensors"
            _equal(_tensors(a / f), _tensors(b / f))
        ref_cfg, ref = read_trtllm_checkpoint(b)
        got = TrtllmTensors(a)
        assert got.config == ref_cfg
        for k, v in ref.items():
            assert torch.equal(got.get(k).float(), v), k


def test_layerwise_logits_equal_stock_model(tiny_ckpt, tiny_tied_ckpt):
    """One layer at a time computes exactly what stock transformers computes on the whole
    float32 model (same modules and kernels): the read-back compares like with like."""
    import torch

    from minitron_deploy.export.hf import logits_of
    from minitron_deploy.export.verify import probe_tokens
    from minitron_deploy.model.io import load_llama, read_config
    from minitron_deploy.model.readback import layerwise_logits
    from minitron_deploy.model.stream import TensorReader

    for src in (tiny_ckpt, tiny_tied_ckpt):
        tokens = probe_tokens(301)
        ref = logits_of(load_llama(src, dtype="bfloat16").float(), tokens)
        r = TensorReader(src)

        def get(n, r=r, bump=1.0):
            return r.get(n).to(torch.bfloat16) * (bump if "layers.2.mlp.up" in n else 1)

        got = layerwise_logits(read_config(src), get, tokens)
        assert torch.equal(ref, got)
        # and it is sensitive: one changed layer weight moves the logits
        bumped = layerwise_logits(read_config(src), lambda n: get(n, bump=1.5), tokens)
        assert (bumped - ref).abs().max() > 1e-3


def test_export_verify_streams_and_catches_a_bad_tensor(tiny_ckpt, tmp_path, monkeypatch):
    """The bf16 exports' read-back runs layer by layer, and a corrupted tensor still fails it."""
    from minitron_deploy.errors import StageError
    from minitron_deploy.export import export_model, trtllm_ckpt
    from minitron_deploy.export.format import ExportSettings

    out = export_model(tiny_ckpt, tmp_path / "hf", "hf")
    assert out["verify"]["read_back"] == "layer by layer"
    assert out["verify"]["max_abs_diff"] == 0.0
    out = export_model(
        tiny_ckpt, tmp_path / "trt", "trtllm-ckpt", ExportSettings(dtype="bf16", tp_size=2)
    )
    assert out["verify"]["read_back"] == "layer by layer"
    real = trtllm_ckpt.TrtllmTensors.get

    def corrupt(self, name):
        t = real(self, name)
        return t * 1.01 if name == "model.layers.4.mlp.down_proj.weight" else t

    monkeypatch.setattr(trtllm_ckpt.TrtllmTensors, "get", corrupt)
    with pytest.raises(StageError, match="read-back"):
        export_model(tiny_ckpt, tmp_path / "trt2", "trtllm-ckpt", ExportSettings(dtype="bf16"))
    assert not (tmp_path / "trt2").exists()
