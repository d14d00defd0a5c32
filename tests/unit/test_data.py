"""Data sources: a disjoint document-level split, formats and errors; rows from prepared data."""

from __future__ import annotations

import json

import pytest
import torch

from minitron_deploy.data.refs import DataRef, load_tokens
from minitron_deploy.data.text import iter_documents, split_of
from minitron_deploy.errors import InputError


def test_split_is_disjoint_and_seed_free(text_dir):
    ids = [d.id for d in iter_documents(str(text_dir))]
    train = {i for i in ids if split_of(i, 0.2) == "train"}
    val = {i for i in ids if split_of(i, 0.2) == "validation"}
    assert train and val and not train & val and train | val == set(ids)


def test_rows_deterministic_and_seeded(tiny_ckpt, text_dir):
    ref = DataRef(source=str(text_dir))
    a = load_tokens(tiny_ckpt, ref, num_samples=8, seq_len=32, seed=1)
    b = load_tokens(tiny_ckpt, ref, num_samples=8, seq_len=32, seed=1)
    c = load_tokens(tiny_ckpt, ref, num_samples=8, seq_len=32, seed=2)
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_validation_rows_come_from_validation_documents_only(tiny_ckpt, text_dir):
    from minitron_deploy.model.io import load_tokenizer

    tok = load_tokenizer(tiny_ckpt)
    ref = DataRef(source=str(text_dir), split="validation", val_fraction=0.3)
    rows = load_tokens(tiny_ckpt, ref, num_samples=4, seq_len=48)
    docs = list(iter_documents(str(text_dir)))
    val_ids = [
        tok(d.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for d in docs
        if split_of(d.id, 0.3) == "validation"
    ]
    stream = [t for ids in val_ids for t in ids]
    text = ",".join(map(str, stream))
    for r in rows.tolist():  # every row is a window of the validation documents' stream
        assert ",".join(map(str, r)) in text


def test_jsonl_and_single_file(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"line {i} " * 50}) for i in range(40)))
    docs = list(iter_documents(str(p)))
    assert len(docs) == 40 and docs[3].id == "d.jsonl:4#0"
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(f"paragraph {i} " * 300 for i in range(200)))
    ids = [d.id for d in iter_documents(str(big))]
    assert len(ids) > 20  # one file is cut into many documents so it can be split
    assert {split_of(i) for i in ids} == {"train", "validation"}


def test_parquet_and_arrow_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    texts = [f"row {i} " * 40 for i in range(30)] + [None]
    table = pa.table({"text": texts, "other": list(range(31))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=7)
    feather.write_feather(table, tmp_path / "b.arrow", chunksize=5)
    for name in ("a.parquet", "b.arrow"):
        docs = list(iter_documents(str(tmp_path / name)))
        assert [d.text for d in docs] == texts[:30], name  # null rows skipped, order kept
        assert docs[0].id == f"{name}:1#0"
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match="no 'text' column"):
        list(iter_documents(str(tmp_path / "c.parquet")))
    (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="cannot read"):
        list(iter_documents(str(tmp_path / "d.parquet")))


def test_builtin_corpus(tiny_ckpt):
    ref = DataRef(source="builtin:pydoc-topics", split="validation")
    assert load_tokens(tiny_ckpt, ref, num_samples=2, seq_len=16).shape == (2, 16)


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


def test_too_little_text(tiny_ckpt, tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("tiny")
    with pytest.raises(InputError, match="fewer than one sequence"):
        load_tokens(tiny_ckpt, DataRef(source=str(p), split="all"), num_samples=2, seq_len=512)
