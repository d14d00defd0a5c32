"""Offline downstream tasks, generated (not copied) from text every machine has and written as
lm-evaluation-harness task definitions (YAML + JSONL), so the same harness runs them.

They are *proxies*: cheap, download-free signals of what a student kept, not substitutes for
MMLU or Winogrande.

- `minitron_cloze_code`: multiple choice. A line of Python from the standard library's
  validation-split documents, cut before an identifier; pick the identifier that followed among
  three other identifiers of the same file.
- `minitron_cloze_prose`: multiple choice. Prose from the Unix manual pages (the held-out
  domain of `builtin:mixed`), cut before a word; pick the word among three other words of the
  same page.
- `minitron_last_word`: last-word prediction (LAMBADA-style) on manual-page paragraphs:
  accuracy = the word is the greedy continuation, plus its perplexity.
- `minitron_next_line`: multiple choice. A C header (`builtin:c-headers`) or Perl module
  (`builtin:perl`) cut at the start of a line; pick the true next line among three other lines
  of the same file of similar length. Both domains are read by no built-in training corpus, so
  a student distilled on `builtin:mixed` never saw them.

Each item keeps up to `CONTEXT_CHARS` characters before the gap. Items are chosen with a seed
from the document ids, so the same files give the same tasks on every machine.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import random
import re
from pathlib import Path

from minitron_deploy.data.text import DEFAULT_VAL_FRACTION, iter_documents, source_digest, split_of
from minitron_deploy.errors import InputError
from minitron_deploy.fsutil import atomic_write_text, cache_root, sha256_json

VERSION = 2  # bump when generation changes (it enters the folder's key)
CONTEXT_CHARS = 600
ITEMS = 400
TASKS = {
    "minitron_cloze_code": "pick the removed identifier of a Python line among 4 from its file",
    "minitron_cloze_prose": "pick the removed word of a manual page among 4 from the same page",
    "minitron_last_word": "predict the last word of a manual-page paragraph (greedy accuracy)",
    "minitron_next_line": "pick the next line of a C header or Perl module among 4 of its lines",
}
NEXT_LINE_SOURCES = ("builtin:c-headers", "builtin:perl")
_MIN_LINE = 12  # characters (stripped) of a candidate line
_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{3,}\b")
_WORD = re.compile(r"(?<![\w-])[a-z]{4,}(?![\w-])")
_MC_METRICS = [
    {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
]


def _rng(doc_id: str, seed: int) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8]))


def _cloze(doc_id: str, text: str, pattern: re.Pattern, seed: int) -> dict | None:
    """One multiple-choice item from a document, or None when it has too few candidates."""
    rng = _rng(doc_id, seed)
    found = [m for m in pattern.finditer(text) if not keyword.iskeyword(m.group())]
    words = sorted({m.group() for m in found})
    if len(words) < 4:
        return None
    spots = [m for m in found if m.start() >= 200]  # some context before the gap
    if not spots:
        return None
    m = rng.choice(spots)
    answer = m.group()
    others = rng.sample([w for w in words if w != answer], 3)
    choices = [*others, answer]
    rng.shuffle(choices)
    context = text[max(0, m.start() - CONTEXT_CHARS) : m.start()]
    return {"id": doc_id, "context": context, "choices": choices, "label": choices.index(answer)}


def _last_word(doc_id: str, text: str, seed: int) -> dict | None:
    """The last word of a long paragraph (ending in a word and a full stop), or None."""
    rng = _rng(doc_id, seed)
    paras = [p.strip() for p in text.split("\n\n")]
    good = []
    for p in paras:
        m = re.search(r"\s([A-Za-z]{3,})\.$", p)
        if m and len(p.split()) >= 30:
            good.append((p, m))
    if not good:
        return None
    p, m = rng.choice(good)
    context = p[: m.start(1)].rstrip()
    return {"id": doc_id, "context": context[-CONTEXT_CHARS:], "target": " " + m.group(1)}


def _next_line(doc_id: str, text: str, seed: int) -> dict | None:
    """The true next line of a file among 3 other distinct lines of the same file whose length
    is within a factor 1.5 of it (so length alone does not give it away), or None."""
    rng = _rng(doc_id, seed)
    lines = text.split("\n")
    good = sorted({x for x in lines if len(x.strip()) >= _MIN_LINE})
    starts, pos = [], 0
    for i, line in enumerate(lines):
        if pos >= 200 and len(line.strip()) >= _MIN_LINE:  # some context before the line
            starts.append((i, pos))
        pos += len(line) + 1
    if not starts:
        return None
    i, at = rng.choice(starts)
    answer = lines[i]
    n = len(answer.strip())
    near = [x for x in good if x != answer and n / 1.5 <= len(x.strip()) <= n * 1.5]
    if len(near) < 3:
        return None
    choices = [*rng.sample(near, 3), answer]
    rng.shuffle(choices)
    context = text[max(0, at - CONTEXT_CHARS) : at]
    return {"id": doc_id, "context": context, "choices": choices, "label": choices.index(answer)}


def _documents(source: str, split: str):
    for d in iter_documents(source):
        if split == "all" or split_of(d.id, DEFAULT_VAL_FRACTION) == split:
            yield d


def generate_items(name: str, n_items: int = ITEMS, seed: int = 0) -> list[dict]:
    """The items of one offline task (up to `n_items`, fewer if the text runs out)."""
    items: list[dict] = []
    if name == "minitron_cloze_code":
        docs = _documents("builtin:python-code", "validation")
        make = lambda d, s: _cloze(d.id, d.text, _IDENT, s)  # noqa: E731
    elif name == "minitron_cloze_prose":
        docs = _documents("builtin:manpages", "all")
        make = lambda d, s: _cloze(d.id, d.text, _WORD, s)  # noqa: E731
    elif name == "minitron_last_word":
        docs = _documents("builtin:manpages", "all")
        make = lambda d, s: _last_word(d.id, d.text, s)  # noqa: E731
    elif name == "minitron_next_line":
        docs = (d for src in NEXT_LINE_SOURCES for d in _documents(src, "all"))
        make = lambda d, s: _next_line(d.id, d.text, s)  # noqa: E731
    else:
        raise InputError(f"unknown offline task {name!r}", fix=f"use one of {sorted(TASKS)}")
    pool = list(docs)
    _rng(name, seed).shuffle(pool)  # items spread over the whole domain, not its first files
    seen = set()
    for rnd in range(4):  # a few items per document when the domain is small
        for d in pool:
            item = make(d, seed + 1000 * rnd)
            if item is not None and (item["id"], item["context"]) not in seen:
                seen.add((item["id"], item["context"]))
                items.append(item)
                if len(items) == n_items:
                    return items
    return items


def _yaml(name: str, data_file: Path) -> dict:
    base = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "metadata": {"version": float(VERSION), "description": TASKS[name]},
    }
    if name == "minitron_last_word":
        return {
            **base,
            "output_type": "loglikelihood",
            "doc_to_text": "{{context}}",
            "doc_to_target": "{{target}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    return {
        **base,
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "target_delimiter": "",
        "metric_list": _MC_METRICS,
    }


def tasks_key(n_items: int = ITEMS, seed: int = 0) -> str:
    """What the generated folder depends on: the generator and the text it reads."""

    return sha256_json(
        {
            "version": VERSION,
            "items": n_items,
            "seed": seed,
            "code": source_digest("builtin:python-code"),
            "man": source_digest("builtin:manpages"),
            "next_line": [source_digest(s) for s in NEXT_LINE_SOURCES],
        }
    )[:16]


def offline_tasks_dir(root: str | Path | None = None, n_items: int = ITEMS, seed: int = 0) -> Path:
    """The folder of generated task YAMLs + JSONL (made once per key under the cache).

    Raises:
        InputError: a domain this machine lacks (e.g. no manual pages installed).
    """
    import yaml

    root = Path(root) if root is not None else cache_root() / "tasks"
    out = root / tasks_key(n_items, seed)
    if (out / "done").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in TASKS:
        items = generate_items(name, n_items, seed)
        if len(items) < 10:
            raise InputError(
                f"offline task {name} found only {len(items)} items on this machine",
                fix="install the manual pages (apt-get install manpages), the C headers "
                "(libc6-dev) and Perl's modules (perl-modules), or use your own YAML + JSONL task",
            )
        data = out / f"{name}.jsonl"
        atomic_write_text(data, "".join(json.dumps(x) + "\n" for x in items))
        atomic_write_text(out / f"{name}.yaml", yaml.safe_dump(_yaml(name, data), sort_keys=False))
    atomic_write_text(out / "done", "")
    return out
