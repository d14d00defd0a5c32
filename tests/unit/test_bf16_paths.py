"""The bf16 paths `auto` takes on a bf16-native CPU (importance, evaluation, distillation, the
built-in engine), pinned to bfloat16 whatever this host is, each compared with float32 within a
bound derived from bf16's epsilon (`testing.rel_tolerance`): bf16 keeps 8 mantissa bits, so one
rounding moves a value by up to 2^-8 = 0.4% of it; reductions accumulate in fp32, so sums and
averages stay within a few such roundings. Each test also shows its bound is narrow enough to
catch a real error (a wrong model, a dropped layer), which moves the compared value far more.

Distillation in bf16 is covered by the bf16 case of
test_distill_trainer.py::test_gradient_checkpointing_and_chunk_size_leave_the_losses_unchanged.
"""

from __future__ import annotations

import pytest
import torch

from minitron_deploy.compress.config import ImportanceConfig
from minitron_deploy.compress.importance import compute_importance
from minitron_deploy.engines import get_engine
from minitron_deploy.evaluation.loss import evaluate_loss
from minitron_deploy.model.io import load_llama
from minitron_deploy.testing import rel_tolerance, tiny_llama

BF16 = rel_tolerance("bfloat16", steps=0)  # 4 x 2^-7 = 3.1% of the compared quantity's scale


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(3, 301, (6, 24), generator=torch.Generator().manual_seed(11))


def test_bf16_evaluation_loss_is_float32_within_bf16_bounds(ids):
    # A loss is a mean over 138 tokens whose rounding errors are independent: its bound is a
    # sixteenth of one value's (0.2%); measured 6e-5 relative. Another random model's loss is
    # 1.6% away, a model without its last layer 0.3%: both fail this comparison.
    bound = rel_tolerance("bfloat16", steps=0, factor=0.25)
    m = tiny_llama(4)
    f32 = evaluate_loss(m, ids, micro_batch=3)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b16 = evaluate_loss(m, ids, micro_batch=3)["loss"]
    assert b16 == pytest.approx(f32, rel=bound)
    assert evaluate_loss(tiny_llama(5), ids, micro_batch=3)["loss"] != pytest.approx(f32, rel=bound)
    del m.model.layers[-1]
    assert evaluate_loss(m, ids, micro_batch=3)["loss"] != pytest.approx(f32, rel=bound)


def test_bf16_importance_scores_rank_channels_as_float32(ids):
    m = tiny_llama(4)
    cfg = ImportanceConfig(micro_batch=3)
    f32 = compute_importance(m, ids, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b16 = compute_importance(m, ids, cfg)
    assert f32.keys() == b16.keys()
    for k, a in f32.items():
        b = b16[k]
        torch.testing.assert_close(b, a, rtol=BF16, atol=BF16 * a.abs().max().item(), msg=k)
        if a.ndim == 1 and a.numel() > 8:
            # what pruning decides: the kept half by score is (almost) the same set
            keep = a.numel() // 2
            same = set(a.topk(keep).indices.tolist()) & set(b.topk(keep).indices.tolist())
            assert len(same) >= keep - max(1, keep // 10), k


def test_bf16_engine_logits_and_greedy_tokens_track_float32(tiny_ckpt, ids):
    f32 = get_engine("torch", tiny_ckpt, dtype="float32")
    b16 = get_engine("torch", tiny_ckpt, dtype="bfloat16")
    assert b16.describe()["dtype"] == "bfloat16"
    prompts = ids[:4, :9]
    ref = f32.prefill_logits(prompts)
    got = b16.prefill_logits(prompts).float()
    scale = ref.abs().max().item()
    torch.testing.assert_close(got, ref, rtol=BF16, atol=BF16 * scale)
    # The same logits from the HF model in float32 (not the engine) agree far more closely, and
    # a model with one layer less is far outside the bf16 bound: the bound can catch an error.
    hf = load_llama(tiny_ckpt, dtype="float32")
    with torch.no_grad():
        assert (hf(prompts).logits[:, -1] - ref).abs().max() < BF16 * scale / 100
        del hf.model.layers[-1]
        assert (hf(prompts, use_cache=False).logits[:, -1] - ref).abs().max() > BF16 * scale
    # Greedy tokens: bf16 may flip near-ties of this random model's logits, and then the
    # continuation differs; the first token (one prefill) agrees where the top-2 gap exceeds
    # the bf16 bound.
    top2 = ref.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * BF16 * scale
    first_f32 = [t[0] for t in f32.generate(prompts, 4, ignore_eos=True)]
    first_b16 = [t[0] for t in b16.generate(prompts, 4, ignore_eos=True)]
    for i in clear.nonzero().flatten().tolist():
        assert first_b16[i] == first_f32[i]
