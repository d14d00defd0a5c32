"""Pruning invariants on odd tiny models: identity, masking equivalence, depth, shapes."""

from __future__ import annotations

import copy

import pytest
import torch

from minitron_deploy.compress.config import ImportanceConfig, PruneConfig, parse_layers
from minitron_deploy.compress.importance import compute_importance
from minitron_deploy.compress.slicing import prune_model
from minitron_deploy.errors import InputError
from minitron_deploy.model.shapes import LlamaShape
from minitron_deploy.testing import tiny_llama

IDS = torch.randint(0, 301, (3, 20), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def model_scores(request):
    m = tiny_llama(request.param, tie_word_embeddings=request.param)
    return m, compute_importance(m, IDS, ImportanceConfig())


def _logits(m, ids=IDS):
    with torch.no_grad():
        return m(ids, use_cache=False).logits


def test_pruning_to_original_sizes_gives_identical_logits(model_scores):
    m, s = model_scores
    p, rec = prune_model(m, s, PruneConfig())
    assert torch.equal(_logits(p), _logits(m))
    assert rec["params_before"] == rec["params_after"] == m.num_parameters()
    assert rec["kept"]["hidden"] == list(range(96))


def test_head_and_neuron_pruning_equals_masking_them_in_the_source(model_scores):
    """Removing heads / KV groups / neurons must equal zeroing their outputs in the source."""
    m, s = model_scores
    cfg = PruneConfig(num_attention_heads=2, num_key_value_heads=1, intermediate_size=77)
    p, rec = prune_model(m, s, cfg)
    masked = copy.deepcopy(m)
    hd = m.config.head_dim
    for i, layer in enumerate(masked.model.layers):
        keep_heads = rec["kept"]["heads"][i]
        assert len(keep_heads) == 2 and {h // 3 for h in keep_heads} == set(
            rec["kept"]["kv_groups"][i]
        )
        with torch.no_grad():
            w = layer.self_attn.o_proj.weight.view(96, 6, hd)
            drop = [h for h in range(6) if h not in keep_heads]
            w[:, drop] = 0
            neurons = rec["kept"]["mlp"][i]
            d = layer.mlp.down_proj.weight
            d[:, [j for j in range(200) if j not in neurons]] = 0
    torch.testing.assert_close(_logits(p), _logits(masked), rtol=1e-5, atol=1e-5)
    # The kept units are the highest-scoring ones.
    for i in range(5):
        g = rec["kept"]["kv_groups"][i][0]
        assert g == int(s["kv_group"][i].argmax())
        top = torch.topk(s["mlp"][i], 77).indices.sort().values.tolist()
        assert rec["kept"]["mlp"][i] == top


def test_query_heads_are_pruned_equally_in_every_kv_group(model_scores):
    m, s = model_scores
    p, rec = prune_model(m, s, PruneConfig(num_attention_heads=4))
    assert p.config.num_attention_heads == 4 and p.config.num_key_value_heads == 2
    for heads in rec["kept"]["heads"]:
        assert [h // 3 for h in heads] == [0, 0, 1, 1]
    for i in range(5):  # ranked within each group
        for g in range(2):
            top = torch.topk(s["head"][i, 3 * g : 3 * g + 3], 2).indices.sort().values + 3 * g
            assert rec["kept"]["heads"][i][2 * g : 2 * g + 2] == top.tolist()


def test_dropping_layer_k_equals_deleting_it_by_hand(model_scores):
    m, s = model_scores
    for k in (0, 3):
        p, rec = prune_model(m, None, PruneConfig(drop_layers=[k]))
        ref = copy.deepcopy(m)
        del ref.model.layers[k]
        ref.config.num_hidden_layers = 4
        for j, layer in enumerate(ref.model.layers):
            layer.self_attn.layer_idx = j
        assert torch.equal(_logits(p), _logits(ref))
        assert rec["dropped_layers"] == [k] and rec["kept"]["layers"] == [
            i for i in range(5) if i != k
        ]


def test_parameter_counts_match_the_formula_and_config(model_scores):
    m, s = model_scores
    cfg = PruneConfig(
        hidden_size=40,
        intermediate_size=64,
        num_attention_heads=2,
        num_layers=3,
        layer_metric="block_importance",
    )
    p, rec = prune_model(m, s, cfg)
    shape = LlamaShape.from_config(p.config)
    assert p.num_parameters() == shape.num_parameters == rec["params_after"]
    assert (p.config.hidden_size, p.config.head_dim, p.config.num_hidden_layers) == (40, 16, 3)
    assert p.model.layers[0].self_attn.q_proj.weight.shape == (2 * 16, 40)
    dropped = sorted(s["block_importance"].argsort()[:2].tolist())
    assert rec["dropped_layers"] == dropped
    if m.config.tie_word_embeddings:
        assert p.lm_head.weight.data_ptr() == p.model.embed_tokens.weight.data_ptr()
    assert torch.isfinite(_logits(p)).all()


def test_block_loss_metric_drops_the_least_harmful_contiguous_block(model_scores):
    m, _ = model_scores
    from minitron_deploy.compress.layers import layer_loss_ranking

    losses = layer_loss_ranking(m, IDS, (2,))["layer_loss_drop2"]
    _, rec = prune_model(m, None, PruneConfig(num_layers=3), val_batches=IDS)
    start = int(losses.argmin())
    assert rec["dropped_layers"] == [start, start + 1]
    with pytest.raises(InputError):  # no stored losses and no validation data
        prune_model(m, None, PruneConfig(num_layers=3))


def test_random_selection_is_seeded_and_differs_from_importance(model_scores):
    m, s = model_scores
    cfg = dict(hidden_size=48, intermediate_size=100, num_layers=4)
    imp, r0 = prune_model(m, s, PruneConfig(**cfg, layer_metric="block_importance"))
    a, r1 = prune_model(m, None, PruneConfig(**cfg, selection="random", seed=1))
    b, r2 = prune_model(m, None, PruneConfig(**cfg, selection="random", seed=1))
    assert r1["kept"] == r2["kept"] and torch.equal(_logits(a), _logits(b))
    assert r1["kept"]["hidden"] != r0["kept"]["hidden"]
    assert a.num_parameters() == imp.num_parameters()


@pytest.mark.parametrize(
    "cfg",
    [
        dict(hidden_size=97),
        dict(intermediate_size=201),
        dict(num_attention_heads=5),  # not divisible by 2 KV heads
        dict(num_attention_heads=8),  # larger
        dict(num_key_value_heads=1, num_attention_heads=4),  # 4 heads in one group > 3
        dict(drop_layers="3-7"),
        dict(drop_layers=[0, 1, 2, 3, 4]),
        dict(num_layers=6),
        dict(hidden_size=50),  # not a multiple of 6 heads: stock transformers refuses it
    ],
)
def test_bad_targets_raise_input_error(model_scores, cfg):
    m, s = model_scores
    with pytest.raises(InputError):
        prune_model(m, s, PruneConfig(**cfg))


def test_width_pruning_needs_matching_scores(model_scores):
    m, s = model_scores
    with pytest.raises(InputError):
        prune_model(m, None, PruneConfig(hidden_size=48))
    other = compute_importance(
        tiny_llama(0, hidden_size=64, num_attention_heads=4), IDS, ImportanceConfig()
    )
    with pytest.raises(InputError):
        prune_model(m, other, PruneConfig(hidden_size=48))


def test_parse_layers_and_config_checks():
    assert parse_layers("16-18,3") == (3, 16, 17, 18)
    assert PruneConfig(drop_layers="1-2").drop_layers == (1, 2)
    with pytest.raises(ValueError, match="bad layer list"):
        parse_layers("5-2")
    with pytest.raises(ValueError):
        PruneConfig(num_layers=2, drop_layers=[1])
    with pytest.raises(ValueError):
        PruneConfig(hidden_size=0)


def test_prune_command_with_nothing_to_drop_needs_no_ranking(tiny_ckpt, tmp_path, capsys):
    """`--num-layers N` with N the source's layer count drops nothing: no validation text or
    loss scores are asked for, and the logits are the source's."""
    from minitron_deploy.cli import main
    from minitron_deploy.model.io import load_llama

    out = tmp_path / "same"
    assert main(["prune", "--model", str(tiny_ckpt), "--num-layers", "5", "--out", str(out)]) == 0
    assert "None" not in capsys.readouterr().err
    ids = torch.randint(0, 301, (2, 12), generator=torch.Generator().manual_seed(0))
    a, b = load_llama(tiny_ckpt, dtype="float32"), load_llama(out, dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(b(ids).logits, a(ids).logits, rtol=0, atol=0)
