"""Evaluation loss, and the importance / prune / eval commands end to end on tiny checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from minitron_deploy.cli import main
from minitron_deploy.evaluation.loss import evaluate_loss
from minitron_deploy.testing import tiny_llama


def test_loss_equals_transformers_own_loss_and_ignores_micro_batch():
    m = tiny_llama(2, tie_word_embeddings=True)
    ids = torch.randint(0, 301, (5, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(ids, labels=ids, use_cache=False).loss.item()
    a = evaluate_loss(m, ids, micro_batch=2)
    b = evaluate_loss(m, ids, micro_batch=5)
    assert abs(a["loss"] - ref) < 1e-5 and abs(b["loss"] - a["loss"]) < 1e-6
    assert a["tokens"] == 5 * 32 and abs(a["ppl"] - torch.tensor(ref).exp().item()) < 1e-2
    # per-window losses: one per sequence, their mean is the loss, each its own sequence's
    w = a["window_losses"]
    assert len(w) == 5 and abs(sum(w) / 5 - a["loss"]) < 1e-9
    with torch.no_grad():
        third = m(ids[2:3], labels=ids[2:3], use_cache=False).loss.item()
    assert abs(w[2] - third) < 1e-5 and a["loss_lo"] <= a["loss"] <= a["loss_hi"]


def test_compare_losses_pairs_windows():
    from minitron_deploy.errors import InputError
    from minitron_deploy.evaluation.loss import compare_losses

    ids = torch.randint(0, 301, (6, 17), generator=torch.Generator().manual_seed(2))
    a, b = (evaluate_loss(tiny_llama(s), ids) for s in (0, 1))
    same = compare_losses(a, a)
    assert same["diff"] == same["lo"] == same["hi"] == 0.0
    d = compare_losses(a, b)
    assert d["n"] == 6 and abs(d["diff"] - (a["loss"] - b["loss"])) < 1e-9
    assert d["lo"] <= d["diff"] <= d["hi"]
    with pytest.raises(InputError, match="same windows"):
        compare_losses(a, evaluate_loss(tiny_llama(0), ids[:3]))


def _json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scores_dir(tiny_ckpt, text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "sc"
    argv = ["importance", "--model", str(tiny_ckpt), "--data", str(text_dir), "--out", str(out)]
    argv += ["--num-samples", "8", "--seq-len", "32", "--layer-loss-blocks", "1,2"]
    argv += ["--val-samples", "4"]
    assert main(argv) == 0
    return out


@pytest.mark.numerics
def test_importance_command_writes_scores_with_provenance(scores_dir, tiny_ckpt):
    from minitron_deploy.compress.scores import load_scores
    from minitron_deploy.fsutil import sha256_tree

    scores, meta = load_scores(scores_dir)
    assert meta["model"]["sha256"] == sha256_tree(tiny_ckpt, exclude=("provenance.json",))
    assert meta["samples"] == 8 and meta["config"]["batch_agg"] == "l2"
    assert {"head", "kv_group", "mlp", "hidden", "block_importance", "layer_loss_drop2"} <= set(
        scores
    )
    summary = json.loads((scores_dir / "scores.json").read_text())
    assert len(summary["summary"]["layer_loss_drop1"]) == 5


@pytest.mark.numerics
@pytest.mark.parametrize("ckpt", ["tiny_ckpt", "tiny_tied_ckpt"])
def test_pruned_checkpoint_loads_with_stock_transformers(ckpt, request, tmp_path, text_dir, capsys):
    from transformers import AutoModelForCausalLM

    from minitron_deploy.model.shapes import LlamaShape

    src = request.getfixturevalue(ckpt)
    sc = tmp_path / "sc"
    base = ["--model", str(src), "--data", str(text_dir)]
    assert (
        main(["importance", *base, "--out", str(sc), "--num-samples", "4", "--seq-len", "32"]) == 0
    )
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(src), "--scores", str(sc), "--out", str(out), "--json"]
    argv += ["--hidden-size", "48", "--intermediate-size", "99", "--num-attention-heads", "2"]
    argv += ["--num-key-value-heads", "1", "--num-layers", "3", "--data", str(text_dir)]
    argv += ["--val-samples", "4", "--seq-len", "32"]
    assert main(argv) == 0
    res = _json_line(capsys)
    model, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["head_dim"], cfg["num_hidden_layers"]) == (48, 16, 3)
    assert model.num_parameters() == LlamaShape.from_config(cfg).num_parameters
    assert res["params_after"] == model.num_parameters()
    rec = json.loads((out / "pruning.json").read_text())
    assert rec["source"]["sha256"] and rec["scores"]["sha256"]
    assert len(rec["kept"]["mlp"]) == 3 and len(rec["kept"]["mlp"][0]) == 99
    assert (out / "tokenizer.json").is_file()
    if cfg.get("tie_word_embeddings"):
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert main(["eval", "--model", str(out), "--data", str(text_dir), "--num-samples", "2",
                 "--seq-len", "32", "--json"]) == 0  # fmt: skip
    ev = _json_line(capsys)
    assert ev["tokens"] == 2 * 31 and ev["loss"] > 0 and ev["ppl"] > 1
    # against its source on the same windows: a paired interval of the difference
    assert main(["eval", "--model", str(out), "--data", str(text_dir), "--num-samples", "4",
                 "--seq-len", "32", "--baseline", str(src), "--json"]) == 0  # fmt: skip
    ev = _json_line(capsys)
    d = ev["vs_baseline"]
    assert d["n"] == 4 and abs(d["diff"] - (ev["loss"] - ev["baseline"]["loss"])) < 1e-9
    assert d["lo"] <= d["diff"] <= d["hi"]


def test_identity_prune_of_checkpoint_keeps_logits(tiny_ckpt, tmp_path):
    from minitron_deploy.compress.config import PruneConfig
    from minitron_deploy.compress.slicing import prune_checkpoint
    from minitron_deploy.model.io import load_llama

    prune_checkpoint(tiny_ckpt, tmp_path / "same", PruneConfig())
    ids = torch.randint(0, 301, (2, 16))
    with torch.no_grad():
        a = load_llama(tiny_ckpt)(ids).logits
        b = load_llama(tmp_path / "same")(ids).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "extra",
    [
        ["--hidden-size", "200"],
        ["--num-attention-heads", "5"],
        ["--drop-layers", "4-9"],
        ["--num-layers", "3"],  # block_loss without --data or stored losses
        ["--hidden-size", "48"],  # width without --scores
        ["--hidden-size", "-3"],
    ],
)
def test_prune_bad_input_exits_2_and_leaves_no_output(tiny_ckpt, tmp_path, capsys, extra):
    out = tmp_path / "never"
    assert main(["prune", "--model", str(tiny_ckpt), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_bad_model_folder_exits_2(tmp_path, text_dir, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    for cmd in (["eval", "--data", str(text_dir)], ["importance", "--data", str(text_dir)]):
        argv = [cmd[0], "--model", str(tmp_path / "m"), *cmd[1:]]
        if cmd[0] == "importance":
            argv += ["--out", str(tmp_path / "sc")]
        assert main(argv) == 2
    assert not (tmp_path / "sc").exists()


@pytest.mark.numerics
def test_sensitivity_report_prunes_one_axis_per_row(tmp_path, tiny_ckpt, text_dir, capsys):
    out = tmp_path / "sc"
    argv = ["importance", "--model", str(tiny_ckpt), "--data", str(text_dir), "--out", str(out)]
    argv += ["--num-samples", "4", "--seq-len", "32", "--val-samples", "2", "--sensitivity"]
    argv += ["--sensitivity-ratios", "0.5", "--json"]
    assert main(argv) == 0
    res = _json_line(capsys)
    rows = res["sensitivity"]["rows"]
    assert [r["axis"] for r in rows] == ["hidden", "ffn", "heads", "kv_heads", "layers"]
    assert rows[0]["target"] == {"hidden_size": 48} and rows[-1]["target"] == {"num_layers": 2}
    assert all(r["params"] < res["sensitivity"]["base"]["params"] for r in rows)
    assert (out / "sensitivity.json").is_file()


def test_prune_refuses_an_existing_output_folder(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prune", "--model", str(tiny_ckpt), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
