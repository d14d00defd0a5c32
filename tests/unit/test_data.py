"""Data sources: determinism, a disjoint document-level split, formats and errors."""

from __future__ import annotations

import json

import pytest
import torch

from minitron_deploy.data.text import documents, iter_documents, split_of, token_sequences
from minitron_deploy.errors import InputError
from minitron_deploy.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_split_is_disjoint_and_seed_free(text_dir):
    train = {d.id for d in documents(str(text_dir), "train", val_fraction=0.2)}
    val = {d.id for d in documents(str(text_dir), "validation", val_fraction=0.2)}
    assert train and val and not train & val
    assert train | val == {d.id for d in iter_documents(str(text_dir))}


def test_sequences_deterministic_and_seeded(tok, text_dir):
    a = token_sequences(tok, str(text_dir), num_samples=8, seq_len=32, seed=1)
    b = token_sequences(tok, str(text_dir), num_samples=8, seq_len=32, seed=1)
    c = token_sequences(tok, str(text_dir), num_samples=8, seq_len=32, seed=2)
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_validation_tokens_never_come_from_train_docs(tok, text_dir):
    val_text = "".join(d.text for d in documents(str(text_dir), "validation", 0.3))
    train_docs = documents(str(text_dir), "train", 0.3)
    assert all(d.text not in val_text for d in train_docs if len(d.text) > 200)


def test_jsonl_and_single_file(tok, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"line {i} " * 50}) for i in range(40)))
    docs = list(iter_documents(str(p)))
    assert len(docs) == 40 and docs[3].id == "d.jsonl:4#0"
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(f"paragraph {i} " * 300 for i in range(200)))
    ids = [d.id for d in iter_documents(str(big))]
    assert len(ids) > 20  # one file is cut into many documents so it can be split
    assert {split_of(i) for i in ids} == {"train", "validation"}


def test_builtin_corpus(tok):
    x = token_sequences(tok, "builtin:pydoc-topics", split="validation", num_samples=2, seq_len=16)
    assert x.shape == (2, 16)


@pytest.mark.parametrize(
    "src,msg",
    [("/no/such/path", "neither an existing path"), ("builtin:nope", "unknown built-in corpus")],
)
def test_bad_sources(src, msg):
    with pytest.raises(InputError, match=msg):
        list(iter_documents(src))


def test_bad_jsonl(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(InputError, match="line 2 has no string field 'text'"):
        list(iter_documents(str(p)))


def test_too_little_text(tok, tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("tiny")
    with pytest.raises(InputError, match="fewer than one sequence|no validation"):
        token_sequences(tok, str(p), split="all", num_samples=2, seq_len=512)
