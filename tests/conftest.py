"""Shared fixtures: tiny odd-shaped Llama checkpoints written once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Built-in models (tiny-llama) are made afresh for each test session, never taken from ~/.cache.
os.environ["MINITRON_CACHE"] = tempfile.mkdtemp(prefix="minitron-test-cache-")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Untied tiny Llama: hidden 96, 6 heads / 2 KV, head_dim 16, FFN 200, vocab 301, 5 layers."""
    from minitron_deploy.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_tied_ckpt(tmp_path_factory) -> Path:
    """Tied-embedding tiny Llama without rope scaling, stored in bf16 and sharded."""
    from minitron_deploy.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tied",
        seed=1,
        tie_word_embeddings=True,
        rope_scaling=None,
        dtype="bfloat16",
        max_shard_size="60KB",
    )


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory) -> Path:
    """A small folder of text files (prose and code) for calibration and validation."""
    import pydoc_data.topics

    d = tmp_path_factory.mktemp("text")
    topics = pydoc_data.topics.topics
    for i, key in enumerate(sorted(topics)[:60]):
        (d / f"doc{i:03d}.txt").write_text(topics[key])
    return d
