"""Importance scores: streaming aggregation equals a stored-activation reference; layer metrics."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from minitron_deploy.compress.config import ImportanceConfig
from minitron_deploy.compress.importance import compute_importance
from minitron_deploy.compress.layers import layer_loss_ranking
from minitron_deploy.compress.scores import load_scores, save_scores
from minitron_deploy.errors import InputError
from minitron_deploy.testing import tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama(0)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 301, (6, 24), generator=torch.Generator().manual_seed(3))


def _captured(model, ids, mlp="pre"):
    """Every scored activation in full (the thing the real pass must never store)."""
    acts: dict[str, list[torch.Tensor]] = {}

    def keep(name, what):
        def hook(mod, args, out):
            t = {"out": out, "in": args[0] if args else None}[what]
            acts.setdefault(name, []).append(t.detach().clone())

        return hook

    hs = []
    for i, layer in enumerate(model.model.layers):
        hs.append(layer.self_attn.o_proj.register_forward_hook(keep(f"o{i}", "in")))
        mod, what = (layer.mlp.gate_proj, "out") if mlp == "pre" else (layer.mlp.down_proj, "in")
        hs.append(mod.register_forward_hook(keep(f"m{i}", what)))
        hs.append(layer.input_layernorm.register_forward_hook(keep(f"n{2 * i}", "out")))
        hs.append(
            layer.post_attention_layernorm.register_forward_hook(keep(f"n{2 * i + 1}", "out"))
        )
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
    finally:
        for h in hs:
            h.remove()
    return {k: torch.cat(v) for k, v in acts.items()}, out.hidden_states


def _agg(a: torch.Tensor, batch: str, seq: str) -> torch.Tensor:
    v = {"mean": a.abs().mean(1), "l2": a.norm(dim=1), "var": a.var(1)}[seq]
    return {"l2": v.norm(dim=0), "mean": v.mean(0), "var": v.var(0, unbiased=False)}[batch]


@pytest.mark.parametrize(
    "batch,seq", [("l2", "mean"), ("mean", "mean"), ("l2", "l2"), ("var", "var"), ("mean", "l2")]
)
def test_streaming_scores_equal_stored_activation_reference(model, ids, batch, seq):
    cfg = ImportanceConfig(batch_agg=batch, seq_agg=seq, micro_batch=4)  # 2 uneven micro-batches
    s = compute_importance(model, ids, cfg)
    acts, _ = _captured(model, ids)
    c = model.config
    n, nh, hd = c.num_hidden_layers, c.num_attention_heads, c.head_dim
    head_ch = torch.stack([_agg(acts[f"o{i}"], batch, seq) for i in range(n)]).view(n, nh, hd)
    torch.testing.assert_close(s["head"], head_ch.norm(dim=2), rtol=1e-4, atol=1e-6)
    kv = c.num_key_value_heads
    torch.testing.assert_close(
        s["kv_group"], head_ch.reshape(n, kv, -1).norm(dim=2), rtol=1e-4, atol=1e-6
    )
    mlp = torch.stack([_agg(acts[f"m{i}"], batch, seq) for i in range(n)])
    torch.testing.assert_close(s["mlp"], mlp, rtol=1e-4, atol=1e-6)
    hidden = sum(_agg(acts[f"n{j}"], batch, seq) for j in range(2 * n))
    torch.testing.assert_close(s["hidden"], hidden, rtol=1e-4, atol=1e-6)


def test_down_input_option_scores_silu_gate_times_up(model, ids):
    s = compute_importance(model, ids, ImportanceConfig(mlp_activation="down_input"))
    acts, _ = _captured(model, ids, mlp="down_input")
    ref = torch.stack([_agg(acts[f"m{i}"], "l2", "mean") for i in range(5)])
    torch.testing.assert_close(s["mlp"], ref, rtol=1e-4, atol=1e-6)
    pre = compute_importance(model, ids, ImportanceConfig())["mlp"]
    assert not torch.allclose(pre, s["mlp"])


def test_block_importance_is_one_minus_cosine_of_layer_input_and_output(model, ids):
    s = compute_importance(model, ids, ImportanceConfig(micro_batch=5))
    _, hidden = _captured(model, ids)
    # hidden_states[i] is the input of layer i, hidden_states[i + 1] its output (i < last).
    ref = torch.stack(
        [
            (1 - torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)).mean()
            for i in range(4)
        ]
    )
    torch.testing.assert_close(s["block_importance"][:4], ref, rtol=1e-4, atol=1e-6)
    assert torch.all(s["block_importance"] >= 0) and torch.all(s["block_importance"] <= 2)


def test_scores_are_deterministic_and_independent_of_micro_batch(model, ids):
    a = compute_importance(model, ids, ImportanceConfig(micro_batch=1))
    b = compute_importance(model, ids, ImportanceConfig(micro_batch=6))
    c = compute_importance(model, ids, ImportanceConfig(micro_batch=1))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(a[k], c[k])


def test_final_norm_option_adds_its_scores(model, ids):
    a = compute_importance(model, ids, ImportanceConfig())
    b = compute_importance(model, ids, ImportanceConfig(include_final_norm=True))
    assert torch.all(b["hidden"] > a["hidden"])


def test_layer_loss_ranking_equals_deleting_layers_by_hand(model, ids):
    from minitron_deploy.evaluation.loss import evaluate_loss

    r = layer_loss_ranking(model, ids, (1, 2))
    assert r["layer_loss_drop1"].shape == (5,) and r["layer_loss_drop2"].shape == (4,)
    for drop in ([2], [3, 4]):
        m = copy.deepcopy(model)
        m.model.layers = torch.nn.ModuleList(
            [layer for i, layer in enumerate(m.model.layers) if i not in drop]
        )
        m.config.num_hidden_layers = len(m.model.layers)
        for j, layer in enumerate(m.model.layers):
            layer.self_attn.layer_idx = j
        want = evaluate_loss(m, ids)["loss"]
        got = r[f"layer_loss_drop{len(drop)}"][drop[0]]
        assert abs(float(got) - want) < 1e-5
    # The model is restored afterwards.
    assert len(model.model.layers) == 5 and model.config.num_hidden_layers == 5
    assert abs(float(r["base_loss"]) - evaluate_loss(model, ids)["loss"]) < 1e-6


def test_layer_loss_ranking_rejects_bad_block_size(model, ids):
    with pytest.raises(InputError):
        layer_loss_ranking(model, ids, (5,))


def test_scores_round_trip_and_missing_scores_error(model, ids, tmp_path):
    s = compute_importance(model, ids, ImportanceConfig(layer_loss_blocks=(1,)), val_batches=ids)
    assert "layer_loss_drop1" in s and "base_loss" in s
    meta = {"model": {"sha256": "abc"}, "data": "x"}
    save_scores(s, tmp_path / "sc", meta)
    back, m = load_scores(tmp_path / "sc")
    assert m == meta and back.keys() == s.keys()
    for k in s:
        assert torch.equal(back[k], s[k])
    with pytest.raises(InputError):
        save_scores(s, tmp_path / "sc", meta)  # exists, no overwrite
    with pytest.raises(InputError):
        load_scores(tmp_path / "nothing")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(InputError):
        load_scores(bad)


def test_config_is_strict():
    with pytest.raises(ValueError):
        ImportanceConfig(batch_agg="max")
    with pytest.raises(ValueError):
        ImportanceConfig(unknown=1)


def test_pipeline_scores_record_the_model_hash_like_the_command(tmp_path):
    """scores.json names the model by path and content hash, from `run` as from `importance`."""
    import json

    from minitron_deploy.fsutil import sha256_tree
    from minitron_deploy.model.io import PROVENANCE
    from minitron_deploy.pipeline import Pipeline
    from minitron_deploy.profile import load_profile

    p = tmp_path / "imp.yaml"
    p.write_text(
        "name: imp\nsource: builtin:tiny-llama\n"
        "data: {calibration: builtin:pydoc-topics}\n"
        "importance: {num_samples: 2, seq_len: 16}\n"
        "variants: [{name: width, prune: {hidden_size: 48}}]\n"
    )
    rec = Pipeline(load_profile(p), tmp_path / "wd", p).run("width/importance", progress=False)
    assert rec["status"] == "ok", rec.get("error")
    stages = {s["node"]: s for s in rec["stages"]}
    meta = json.loads((Path(stages["width/importance"]["outputs"]["scores"]) / "scores.json")
                      .read_text())["meta"]  # fmt: skip
    model = Path(stages["source"]["outputs"]["model"])
    assert meta["model"] == {
        "path": str(model),
        "sha256": sha256_tree(model, exclude=(PROVENANCE,)),
    }
