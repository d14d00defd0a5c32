"""ONNX export with KV cache: onnx.checker, and onnxruntime logits against torch."""

from __future__ import annotations

import json

import pytest

from minitron_deploy.export.format import ExportSettings

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TOL = 1e-4


@pytest.fixture(scope="module")
def pruned_ckpt(tmp_path_factory):
    """Width-pruned shape: hidden 48 != 6 heads x head_dim 16."""
    from minitron_deploy.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("w") / "pruned", seed=3, hidden_size=48)


@pytest.fixture(scope="module")
def onnx_dir(pruned_ckpt, tmp_path_factory):
    from minitron_deploy.export import export_model

    out = tmp_path_factory.mktemp("onnx") / "onnx"
    export_model(pruned_ckpt, out, "onnx", ExportSettings(verify=False))
    return out


def test_graph_passes_checker_and_has_genai_io_names(onnx_dir):
    import onnx

    from minitron_deploy.export.onnx import check_onnx

    check_onnx(onnx_dir)
    g = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    ins, outs = [i.name for i in g.input], [o.name for o in g.output]
    assert ins[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert ins[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert len(ins) == 3 + 2 * 5 and outs[0] == "logits" and outs[-1] == "present.4.value"
    meta = json.loads((onnx_dir / "onnx_io.json").read_text())
    assert meta["head_dim"] == 16 and meta["num_key_value_heads"] == 2
    assert (onnx_dir / "model.onnx.data").is_file() and (onnx_dir / "tokenizer.json").is_file()


def test_onnxruntime_logits_match_torch_full_and_incremental(onnx_dir, pruned_ckpt):
    import numpy as np
    import torch

    from minitron_deploy.export.onnx import onnx_session, run_onnx
    from minitron_deploy.export.verify import probe_tokens
    from minitron_deploy.model.io import load_llama

    ref = load_llama(pruned_ckpt)
    tokens = probe_tokens(ref.config.vocab_size, batch=3, seq=20)
    with torch.no_grad():
        want = ref(input_ids=tokens).logits.numpy()
    sess = onnx_session(onnx_dir)
    full, presents = run_onnx(sess, tokens.numpy())
    assert np.abs(full - want).max() < TOL
    assert presents[0].shape == (3, 2, 20, 16)
    # prefill 12 tokens, then decode the rest one token at a time with the cache
    _, past = run_onnx(sess, tokens[:, :12].numpy())
    for i in range(12, 20):
        step, past = run_onnx(sess, tokens[:, i : i + 1].numpy(), past=past, past_len=i)
        assert np.abs(step[:, 0] - want[:, i]).max() < TOL, i


def test_left_padded_batch_matches_unpadded_rows(onnx_dir, pruned_ckpt):
    import numpy as np
    import torch

    from minitron_deploy.export.onnx import onnx_session, run_onnx
    from minitron_deploy.model.io import load_llama

    ref = load_llama(pruned_ckpt)
    short = torch.tensor([[5, 9, 13, 40, 77]])
    long = torch.tensor([[8, 3, 99, 100, 7, 12, 250, 31]])
    ids = np.zeros((2, 8), np.int64)
    ids[0, 3:], ids[1] = short[0].numpy(), long[0].numpy()
    mask = np.ones((2, 8), np.int64)
    mask[0, :3] = 0
    logits, _ = run_onnx(onnx_session(onnx_dir), ids, attention_mask=mask)
    with torch.no_grad():
        a, b = ref(input_ids=short).logits[0].numpy(), ref(input_ids=long).logits[0].numpy()
    assert np.abs(logits[0, 3:] - a).max() < TOL
    assert np.abs(logits[1] - b).max() < TOL


def test_export_model_verifies_onnx(pruned_ckpt, tmp_path):
    from minitron_deploy.export import export_model

    s = export_model(pruned_ckpt, tmp_path / "o", "onnx")
    assert s["verify"]["max_abs_diff"] < TOL and s["verify"]["top1_agreement"] == 1.0


def test_onnxruntime_genai_greedy_generation_matches_torch(onnx_dir, pruned_ckpt):
    og = pytest.importorskip("onnxruntime_genai")
    import numpy as np
    import torch

    from minitron_deploy.model.io import load_llama

    ref = load_llama(pruned_ckpt)
    model = og.Model(str(onnx_dir))
    for prompt in ([5, 9, 13, 40, 77], [200, 3, 150]):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=16)
        gen = og.Generator(model, params)
        gen.append_tokens(np.array([prompt], dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        got = [int(t) for t in gen.get_sequence(0)]
        with torch.no_grad():
            want = ref.generate(
                torch.tensor([prompt]), max_length=16, do_sample=False, eos_token_id=None,
                pad_token_id=0,
            )[0].tolist()  # fmt: skip
        assert got == want
