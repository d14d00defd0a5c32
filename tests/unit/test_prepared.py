"""Prepared data: shards and index, the sampler, resume after kill -9, corruption, tokenizers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from minitron_deploy.data.prepare import prepare_corpus
from minitron_deploy.data.refs import DataRef, describe, open_split
from minitron_deploy.data.sampler import Permutation, WindowSampler
from minitron_deploy.data.shards import PreparedData, WindowSource
from minitron_deploy.data.text import iter_documents, split_of
from minitron_deploy.errors import InputError
from minitron_deploy.model.io import load_tokenizer

CLI = [sys.executable, "-m", "minitron_deploy.cli"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Prose in 40 files (enough documents for both splits, several small shards)."""
    import pydoc_data.topics

    d = tmp_path_factory.mktemp("corpus")
    topics = pydoc_data.topics.topics
    for i, key in enumerate(sorted(topics)[:40]):
        (d / f"t{i:02d}.txt").write_text(topics[key])
    return d


@pytest.fixture(scope="module")
def prepared(corpus, tiny_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "p"
    prepare_corpus(str(corpus), tiny_ckpt, out, shard_tokens=4096, batch_docs=8, progress=False)
    return out


def _expected_stream(corpus, tiny_ckpt, split: str) -> list[int]:
    tok = load_tokenizer(tiny_ckpt)
    out: list[int] = []
    for d in iter_documents(str(corpus)):
        if split_of(d.id, 0.05) == split:
            out += tok(d.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def test_shards_hold_every_document_of_its_split_in_order(prepared, corpus, tiny_ckpt):
    data = PreparedData(prepared)
    ix = data.index
    assert ix["dtype"] == "uint16" and ix["vocab_size"] == 301
    assert len(ix["splits"]["train"]["shards"]) > 3  # several shards at 4096 tokens each
    for split in ("train", "validation"):
        want = _expected_stream(corpus, tiny_ckpt, split)
        s = data.split(split)
        got = np.concatenate([np.asarray(m) for m in s._maps]).tolist()
        assert got == want, split
        docs = sum(x["documents"] for x in ix["splits"][split]["shards"])
        assert docs == sum(t == 2 for t in want)  # one EOS per document
        # a window spanning two shards reads across the boundary
        w = s.starts[1] // 100
        assert s.window(w, 100).tolist() == want[w * 100 : (w + 1) * 100]


def test_rows_and_training_windows_are_seeded_permutations(prepared):
    s = PreparedData(prepared).split("train")
    n = s.windows(64)
    all_windows = sorted(tuple(s.window(w, 64).tolist()) for w in range(n))
    every = s.rows(10**9, 64, seed=3)  # no cap but the data: every window once
    assert every.shape == (n, 64) and sorted(map(tuple, every.tolist())) == all_windows
    assert torch.equal(s.rows(8, 64, seed=1), s.rows(8, 64, seed=1))
    assert not torch.equal(s.rows(8, 64, seed=0), s.rows(8, 64, seed=1))
    src = WindowSource(s, 64, seed=5)
    first = src.get(list(range(n)))  # epoch 0: each window exactly once
    assert sorted(map(tuple, first.tolist())) == all_windows
    second = src.get(list(range(n, 2 * n)))  # epoch 1: the same windows in another order
    assert sorted(map(tuple, second.tolist())) == all_windows
    assert not torch.equal(first, second)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_permutation_is_a_bijection(n):
    p = Permutation(n, seed=11)
    assert sorted(p(i) for i in range(n)) == list(range(n))
    if n > 8:
        assert [p(i) for i in range(n)] != list(range(n))
    sampler = WindowSampler(n, 2)
    assert sorted(sampler(i) for i in range(n, 2 * n)) == list(range(n))


def test_reuse_refusal_and_overwrite(prepared, corpus, tiny_ckpt, tmp_path):
    ix = json.loads((prepared / "index.json").read_text())
    mtimes = sorted((p.name, p.stat().st_mtime_ns) for p in prepared.iterdir())
    again = prepare_corpus(str(corpus), tiny_ckpt, prepared, shard_tokens=4096, progress=False)
    assert again["reused"] and again["key"] == ix["key"]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in prepared.iterdir()) == mtimes
    other = tmp_path / "other.txt"
    other.write_text("some other text\n\n" * 200)
    with pytest.raises(InputError, match="other sources or another tokenizer"):
        prepare_corpus(str(other), tiny_ckpt, prepared, progress=False)
    assert json.loads((prepared / "index.json").read_text()) == ix  # nothing touched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError):
        prepare_corpus(str(other), tiny_ckpt, mine, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_corrupt_and_truncated_shards_are_detected(prepared, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    PreparedData(copy)  # an intact copy opens
    shard = copy / "train-00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF
    shard.write_bytes(bytes(raw))  # same size, other content
    with pytest.raises(InputError, match="does not match its digest"):
        PreparedData(copy)
    shard.write_bytes(bytes(raw[:-6]))
    with pytest.raises(InputError, match="truncated"):
        PreparedData(copy)
    (copy / "train-00001.bin").unlink()
    with pytest.raises(InputError, match="missing"):
        PreparedData(copy)


def test_other_tokenizer_is_refused(prepared, tiny_ckpt, tmp_path):
    from minitron_deploy.testing import tiny_tokenizer

    other = tmp_path / "tok"
    tiny_tokenizer(400).save_pretrained(str(other))
    (other / "config.json").write_text((tiny_ckpt / "config.json").read_text())
    PreparedData(prepared).check_tokenizer(tiny_ckpt)
    with pytest.raises(InputError, match="another tokenizer"):
        open_split(DataRef(source=str(prepared)), other)


def test_large_vocabulary_uses_uint32(tmp_path, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70_000)}
    words = {w for d in iter_documents(str(corpus)) for w in d.text.split()}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    vocab["[UNK]"], vocab["</s>"] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]")
    fast.save_pretrained(str(tmp_path / "tok"))
    ix = prepare_corpus(str(corpus), tmp_path / "tok", tmp_path / "p", progress=False)
    assert ix["dtype"] == "uint32" and ix["vocab_size"] > 65536
    ids = PreparedData(tmp_path / "p").split("train").window(0, 32)
    assert int(ids.max()) >= 70_000  # corpus words sit above 2**16


def test_prepare_survives_kill_9_and_resumes(corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "p"
    env = {**os.environ, "MINITRON_PREPARE_FLUSH_DELAY": "30"}
    cmd = [*CLI, "data", "prepare", str(corpus), "--tokenizer", str(tiny_ckpt), "--out", str(out)]
    cmd += ["--shard-tokens", "4096", "--batch-docs", "8"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "progress.json").is_file():  # the first shard is flushed, then it sleeps
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "index.json").exists()
    with pytest.raises(InputError, match="unfinished preparation"):
        PreparedData(out)
    done = json.loads((out / "progress.json").read_text())["docs_done"]
    assert done > 0
    r = subprocess.run(cmd, capture_output=True, text=True)  # resumes after the last shard
    assert r.returncode == 0, r.stderr
    clean = tmp_path / "clean"
    prepare_corpus(str(corpus), tiny_ckpt, clean, shard_tokens=4096, batch_docs=8, progress=False)
    a, b = PreparedData(out), PreparedData(clean)
    assert a.index["key"] == b.index["key"]
    for split in ("train", "validation"):
        ta = np.concatenate([np.asarray(m) for m in a.split(split)._maps])
        tb = np.concatenate([np.asarray(m) for m in b.split(split)._maps])
        assert np.array_equal(ta, tb), split
    assert not (out / "progress.json").exists()


def test_data_cli_info_verify_and_bad_input(prepared, tmp_path, tiny_ckpt):
    r = subprocess.run([*CLI, "data", "info", str(prepared), "--json"], capture_output=True)
    assert r.returncode == 0 and json.loads(r.stdout)["dtype"] == "uint16"
    r = subprocess.run([*CLI, "data", "verify", str(prepared)], capture_output=True, text=True)
    assert r.returncode == 0 and "match their SHA-256" in r.stderr
    r = subprocess.run([*CLI, "data", "info", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "not prepared data" in r.stderr
    out = tmp_path / "new"
    bad = [*CLI, "data", "prepare", "/no/such", "--tokenizer", str(tiny_ckpt), "--out", str(out)]
    r = subprocess.run(bad, capture_output=True, text=True)
    assert r.returncode == 2 and "neither an existing path" in r.stderr and not out.exists()
    bad = [*CLI, "data", "prepare", str(prepared), "--tokenizer", str(tmp_path), "--out", str(out)]
    r = subprocess.run(bad, capture_output=True, text=True)
    assert r.returncode == 2 and not out.exists()


def test_describe_names_content_not_path(prepared, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(prepared, moved)
    a = describe(PreparedData(prepared).split("train"))
    b = describe(PreparedData(moved).split("train"))
    assert a == b and str(tmp_path) not in json.dumps(a)


def test_bad_input_found_part_way_leaves_nothing(tiny_ckpt, tmp_path):
    p = tmp_path / "d.jsonl"
    good = [json.dumps({"text": f"line {i} " * 200}) for i in range(60)]
    p.write_text("\n".join([*good, '{"txt": 1}']))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="line 61 has no string field 'text'"):
        prepare_corpus(str(p), tiny_ckpt, out, shard_tokens=1024, batch_docs=4, progress=False)
    assert not out.exists()  # shards were flushed before the bad line: all removed


def test_a_weighted_source_counts_its_training_documents_n_times(corpus, tiny_ckpt, tmp_path):
    from minitron_deploy.data.text import source_digest, source_weight

    notes = tmp_path / "notes.jsonl"  # a small source mixed in with weight 3
    notes.write_text(
        "".join(json.dumps({"text": f"note {i}: " + "word " * 40}) + "\n" for i in range(60))
    )
    src = f"{corpus},{notes}*3"
    out = tmp_path / "p"
    prepare_corpus(src, tiny_ckpt, out, shard_tokens=4096, batch_docs=8, progress=False)
    tok = load_tokenizer(tiny_ckpt)
    want = {"train": [], "validation": []}
    for d in iter_documents(str(corpus)):
        want[split_of(d.id, 0.05)] += tok(d.text, add_special_tokens=False)["input_ids"] + [2]
    note_docs = list(iter_documents(str(notes)))
    assert {d.repeat for d in iter_documents(src) if d.id.startswith("notes")} == {3}
    for d in note_docs:
        ids = tok(d.text, add_special_tokens=False)["input_ids"] + [2]
        split = split_of(d.id, 0.05)
        want[split] += ids * (3 if split == "train" else 1)  # validation text counts once
    assert any(split_of(d.id, 0.05) == "validation" for d in note_docs)
    data = PreparedData(out)
    for split in ("train", "validation"):
        got = np.concatenate([np.asarray(m) for m in data.split(split)._maps]).tolist()
        assert got == want[split], split
    # the weight is part of what the data is (its cache key), a weight of 1 is no weight
    assert source_digest(src) != source_digest(f"{corpus},{notes}")
    assert source_digest(f"{corpus},{notes}*1") == source_digest(f"{corpus},{notes}")
    assert source_weight("builtin:mixed*12") == ("builtin:mixed", 12)
    for bad in (f"{notes}*0", "*3"):
        with pytest.raises(InputError, match="whole number >= 1"):
            list(iter_documents(bad))


def test_profile_paths_keep_their_weight(tmp_path):
    from minitron_deploy.profile.checks import resolve_data

    (tmp_path / "notes.jsonl").write_text('{"text": "x"}\n')
    got = resolve_data("builtin:mixed, notes.jsonl*4", tmp_path)
    assert got == f"builtin:mixed,{tmp_path / 'notes.jsonl'}*4"
