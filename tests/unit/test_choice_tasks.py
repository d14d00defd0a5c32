"""The fast item scorer (`evaluation/choice.py`) equals scoring each choice as a whole sequence,
and the next-line task (`offline_tasks.minitron_next_line`) is deterministic, built from held-out
text only, with distractors from the same document; chance is 1/4."""

from __future__ import annotations

import pytest
import torch

from minitron_deploy.data import corpora
from minitron_deploy.data.corpora import CORPORA, domains_of
from minitron_deploy.evaluation import offline_tasks
from minitron_deploy.evaluation.choice import encode_item, score_encoded
from minitron_deploy.evaluation.offline_tasks import NEXT_LINE_SOURCES, generate_items
from minitron_deploy.testing import tiny_llama, tiny_tokenizer

ITEMS = [
    {"context": "the cat sat on the ", "choices": ["mat", "dog", "tree", "x y"], "label": 0},
    {
        "context": "def add(a, b):\n    return a",
        "choices": [" + b", " - b", "*", "//b"],
        "label": 2,
    },
    {"context": "one", "choices": ["two three four", " five", " six", " s"], "label": 1},
    {"context": "import os\nimport", "choices": [" sys", " json", " re", " io"], "label": 3},
    {"context": "a b c d e f g h", "target": " i"},
]


def _whole_sequence(model, enc: dict) -> tuple[list[float], list[bool]]:
    """Each choice scored alone: context + choice as one unpadded sequence, no cache."""
    lps, greedy = [], []
    for c in enc["choices"]:
        ids = torch.tensor([enc["context"] + c])
        with torch.no_grad():
            logp = model(ids, use_cache=False).logits.float().log_softmax(-1)[0]
        n = len(enc["context"])
        d = logp[n - 1 : n - 1 + len(c)]
        t = torch.tensor(c)
        lps.append(float(d.gather(1, t[:, None]).sum()))
        greedy.append(bool((d.argmax(-1) == t).all()))
    return lps, greedy


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_cached_scoring_equals_whole_sequences(batch):
    model, tok = tiny_llama(seed=3), tiny_tokenizer()
    enc = [encode_item(tok, x, context_tokens=6) for x in ITEMS]
    assert all(len(e["context"]) <= 6 for e in enc)
    assert len({len(e["context"]) for e in enc}) > 1  # left padding is exercised
    got = score_encoded(model, enc, batch_size=batch)
    for e, g in zip(enc, got, strict=True):
        lps, greedy = _whole_sequence(model, e)
        assert g["logprobs"] == pytest.approx(lps, abs=1e-4)
        assert g["greedy"] == greedy
        if len(lps) > 1:
            assert g["acc"] == float(max(range(len(lps)), key=lps.__getitem__) == e["label"])


def test_trailing_space_moves_to_the_choices():
    tok = tiny_tokenizer()
    e = encode_item(tok, ITEMS[0])
    assert e["context"] == tok("the cat sat on the", add_special_tokens=False)["input_ids"]
    assert e["choices"][0] == tok(" mat", add_special_tokens=False)["input_ids"]
    assert e["nbytes"][0] == len(" mat")


DOC = "\n".join(
    ["/* a header of some length so that the context is long enough to start */"] * 4
    + [f"#define NAME_{i} ({i} << {i % 7})  /* flag {i} */" for i in range(40)]
)


def test_next_line_item_from_its_own_document():
    items = [offline_tasks._next_line("d", DOC, seed) for seed in range(20)]
    lines = set(DOC.split("\n"))
    for it in items:
        assert it is not None and len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert set(it["choices"]) <= lines  # distractors are lines of the same document
        answer = it["choices"][it["label"]]
        at = len(it["context"])
        assert DOC.endswith(it["context"] + DOC[DOC.index(it["context"]) + at :])
        assert DOC[DOC.index(it["context"]) + at :].startswith(answer + "\n") or DOC.endswith(
            answer
        )
        n = len(answer.strip())
        assert all(n / 1.5 <= len(c.strip()) <= n * 1.5 for c in it["choices"])
    assert len({it["label"] for it in items}) > 1  # the answer's position varies
    assert items == [offline_tasks._next_line("d", DOC, seed) for seed in range(20)]


def test_next_line_needs_candidates():
    assert offline_tasks._next_line("d", "short\nfile\n", 0) is None


def test_next_line_sources_are_read_by_no_training_corpus():
    trained = {d for name, c in CORPORA.items() if len(c.members) > 1 for d in domains_of(name)}
    for src in NEXT_LINE_SOURCES:
        assert src.split(":", 1)[1] not in trained


def test_next_line_task_is_deterministic_on_this_machine(tmp_path, monkeypatch):
    """Generated twice from a small stand-in folder of headers: the same items, 4 choices,
    chance 1/4, every answer and distractor a line of the item's own file."""
    inc = tmp_path / "include"
    inc.mkdir()
    texts = {}
    for k in range(6):
        body = "\n".join(
            [f"/* header {k}: declarations of the library's functions and types */"] * 5
            + [f"extern int lib{k}_function_{i}(int a{i}, char *b{i});" for i in range(30)]
        )
        (inc / f"h{k}.h").write_text(body)
        texts[f"include:h{k}.h#0"] = body
    monkeypatch.setattr(corpora, "INCLUDE_ROOT", inc)
    monkeypatch.setattr(corpora, "PERL_ROOT", tmp_path / "no-perl")
    a = generate_items("minitron_next_line", 12, seed=1)
    b = generate_items("minitron_next_line", 12, seed=1)
    assert a == b and len(a) == 12
    for it in a:
        lines = set(texts[it["id"]].split("\n"))
        assert set(it["choices"]) <= lines and 0 <= it["label"] < 4
    assert generate_items("minitron_next_line", 12, seed=2) != a
