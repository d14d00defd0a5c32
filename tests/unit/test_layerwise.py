"""Layer-sequential passes (`model.layerwise`) equal the whole-model passes on tiny models.

Tolerance: none. Each decoder layer runs with the arguments the whole model passes it, on the
same micro-batches, with the same kernels, so every activation, and every score computed from
one, is bitwise the whole-model one; `torch.equal` is asserted (float32 and bfloat16).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from minitron_deploy.compress.config import ImportanceConfig
from minitron_deploy.compress.importance import compute_importance, score_checkpoint
from minitron_deploy.compress.scores import META_FORMAT, normalize_meta
from minitron_deploy.errors import InputError
from minitron_deploy.model.io import load_llama
from minitron_deploy.model.layerwise import LayerwiseLlama, choose, memory_estimate
from minitron_deploy.testing import make_tiny_checkpoint

GIB = 2**30


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def ckpt(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("lw") / "m"
    # sharded, so tensors of one layer come from different files
    return make_tiny_checkpoint(d, tie_word_embeddings=request.param, max_shard_size="60KB")


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 301, (7, 20), generator=torch.Generator().manual_seed(3))


CONFIGS = [
    ImportanceConfig(micro_batch=3, include_final_norm=True),
    ImportanceConfig(micro_batch=4, mlp_activation="down_input", batch_agg="var", seq_agg="l2"),
    ImportanceConfig(micro_batch=7, batch_agg="mean", seq_agg="var"),
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["paper", "down_input-var-l2", "mean-var"])
def test_every_metric_equals_the_whole_model_bitwise(ckpt, ids, cfg, dtype):
    whole = compute_importance(load_llama(ckpt, dtype=dtype), ids, cfg)
    lw = compute_importance(LayerwiseLlama(ckpt, dtype=dtype), ids, cfg)
    assert whole.keys() == lw.keys() == {"head", "kv_group", "mlp", "hidden", "block_importance"}
    for k in whole:
        assert torch.equal(whole[k], lw[k]), k
        assert bool(whole[k].abs().sum() > 0), k  # not trivially equal


def test_decoder_pass_frees_every_layer(ckpt, ids):
    lw = LayerwiseLlama(ckpt, dtype="float32")
    seen = []

    def after(i, layer):
        seen.append((i, next(layer.parameters()).device.type))

    lw.decoder_pass(ids.split(4), after_layer=after)
    assert seen == [(i, "cpu") for i in range(5)]
    assert {p.device.type for p in lw.model.parameters()} == {"meta"}


def test_loss_rankings_are_refused_layer_sequentially(ckpt, ids):
    with pytest.raises(InputError, match="layer_loss_blocks"):
        compute_importance(
            LayerwiseLlama(ckpt), ids, ImportanceConfig(layer_loss_blocks=(1,)), val_batches=ids
        )


def test_choose_follows_the_setting_and_the_estimate():
    est = {"whole": 10 * GIB, "layer_sequential": 2 * GIB}
    assert choose("auto", est, available=20 * GIB)[0] is False
    assert choose("auto", est, available=8 * GIB)[0] is True
    assert choose("true", est, available=100 * GIB)[0] is True
    assert choose("false", est, available=1 * GIB)[0] is False
    with pytest.raises(InputError, match="even one layer at a time"):
        choose("auto", est, available=2 * GIB)


def test_8b_estimate_needs_layer_sequential_on_24gb():
    cfg = {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": False,
    }
    est = memory_estimate(cfg, weight_bytes=2, rows=8, seq_len=256, micro_batch=8, state_bytes=2)
    assert est["whole"] > 16 * GIB > 4 * GIB > est["layer_sequential"]
    assert choose("auto", est, available=20 * GIB)[0] is True


def test_yaml_booleans_are_accepted_and_the_setting_stays_out_of_keys():
    assert ImportanceConfig(layer_sequential=True).layer_sequential == "true"
    assert ImportanceConfig(layer_sequential=False).layer_sequential == "false"
    assert "layer_sequential" not in ImportanceConfig(layer_sequential=True).model_dump()
    with pytest.raises(ValueError):
        ImportanceConfig(layer_sequential="sometimes")


def _split(tmp_path: Path, model: Path):
    from minitron_deploy.data.refs import DataRef, open_split

    return open_split(DataRef(source="builtin:pydoc-topics", split="train"), model)


@pytest.mark.parametrize("setting", ["true", "false"])
def test_score_checkpoint_records_one_meta_shape(ckpt, tmp_path, setting):
    cfg = ImportanceConfig(num_samples=3, seq_len=16, layer_sequential=setting)
    res = score_checkpoint(ckpt, _split(tmp_path, ckpt), cfg, dtype="float32")
    m = res.meta
    assert m["format"] == META_FORMAT and m["layer_sequential"] is (setting == "true")
    assert set(m) == {
        "format", "model", "calibration", "validation", "samples", "seq_len", "val_samples",
        "dtype", "config", "layer_sequential", "ranks", "seconds", "command",
    }  # fmt: skip
    assert (res.model is None) is (setting == "true")
    assert m["samples"] == 3 and m["seq_len"] == 16 and m["dtype"] == "float32"


def test_score_checkpoint_layer_sequential_equals_whole(ckpt, tmp_path):
    split = _split(tmp_path, ckpt)
    runs = [
        score_checkpoint(
            ckpt, split, ImportanceConfig(num_samples=4, seq_len=16, layer_sequential=s)
        )
        for s in ("true", "false")
    ]
    for k in runs[0].scores:
        assert torch.equal(runs[0].scores[k], runs[1].scores[k]), k
    strip = ("layer_sequential", "seconds")
    assert {k: v for k, v in runs[0].meta.items() if k not in strip} == {
        k: v for k, v in runs[1].meta.items() if k not in strip
    }


def test_old_meta_shapes_are_mapped_and_newer_ones_refused():
    command = {"model": {"path": "m", "sha256": "x"}, "data": {"source": "s"}, "samples": 8,
               "seq_len": 16, "val_samples": 0, "dtype": "auto", "config": {}, "seconds": 1.0,
               "command": "c"}  # fmt: skip
    pipeline = {"model": {"path": "m", "sha256": "x"}, "calibration": {"prepared": "k"},
                "validation": None, "config": {}, "rows": 8}  # fmt: skip
    for old in (command, pipeline):
        m = normalize_meta(old)
        assert m["format"] == 1 and m["samples"] == 8 and m["calibration"] is not None
        assert m["layer_sequential"] is False and m["model"] == old["model"]
    with pytest.raises(InputError, match="format"):
        normalize_meta({"format": META_FORMAT + 1})


def test_command_option_runs_layer_sequentially(ckpt, tmp_path):
    from minitron_deploy.cli import main

    out = tmp_path / "scores"
    rc = main(
        [
            "importance", "--model", str(ckpt), "--data", "builtin:pydoc-topics",
            "--out", str(out), "--num-samples", "2", "--seq-len", "16",
            "--layer-sequential", "true",
        ]
    )  # fmt: skip
    assert rc == 0
    meta = json.loads((out / "scores.json").read_text())["meta"]
    assert meta["layer_sequential"] is True and meta["format"] == META_FORMAT


def test_pipeline_importance_stage_honours_the_setting(tmp_path):
    """The stage runs `score_checkpoint` too: same meta shape, the profile's setting applies."""
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    p = tmp_path / "imp.yaml"
    p.write_text(
        "name: imp\nsource: builtin:tiny-llama\n"
        "data: {calibration: builtin:pydoc-topics}\n"
        "importance: {num_samples: 2, seq_len: 16, layer_sequential: true}\n"
        "variants: [{name: width, prune: {hidden_size: 48}}]\n"
    )
    rec = Pipeline(load_profile(p), tmp_path / "wd", p).run("width/importance", progress=False)
    assert rec["status"] == "ok", rec.get("error")
    stage = {s["node"]: s for s in rec["stages"]}["width/importance"]
    assert stage["metrics"]["layer_sequential"] is True
    meta = json.loads((Path(stage["outputs"]["scores"]) / "scores.json").read_text())["meta"]
    assert meta["format"] == META_FORMAT and meta["layer_sequential"] is True
    assert meta["samples"] == 2 and meta["ranks"] == 1
