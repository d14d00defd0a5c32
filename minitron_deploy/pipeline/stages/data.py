"""The `data` stage: tokenize a text source once into token shards (reused while its content
stays), with the source model's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from minitron_deploy.data.prepare import prepare_corpus
from minitron_deploy.data.refs import is_prepared
from minitron_deploy.data.shards import PreparedData
from minitron_deploy.data.text import source_bytes, source_digest
from minitron_deploy.errors import InputError
from minitron_deploy.pipeline import estimate as E
from minitron_deploy.pipeline.context import StageContext
from minitron_deploy.pipeline.stages.base import NodeConfig, Stage


class DataNode(NodeConfig):
    """A text source prepared with the source model's tokenizer (keyed by content)."""

    source: str = Field(description="path(s) or builtin:<name>, comma-separated; or prepared data")
    val_fraction: float


def keyed(config: Any, hashes: Any) -> dict[str, Any]:
    """Text enters its key by content (its files' digests, or a prepared folder's key), not
    by path: moving a corpus keeps every key, editing it changes the stages that read it."""
    src = str(config.source)
    if is_prepared(src) and (Path(src) / "index.json").is_file():
        key = json.loads((Path(src) / "index.json").read_text()).get("key")
        return {"prepared": key, "val_fraction": config.val_fraction}
    try:
        content = source_digest(src, hashes.file)
    except InputError:  # not here (a cluster profile planned on a laptop): keyed by its name
        return {"missing": src, "val_fraction": config.val_fraction}
    return {"content": content, "val_fraction": config.val_fraction}


def run(ctx: StageContext) -> dict[str, Any]:
    c = ctx.config
    tok = ctx.model_dir("tokenizer")
    if is_prepared(c.source):
        data = PreparedData(c.source)
        data.check_tokenizer(tok)
        if data.index["val_fraction"] != c.val_fraction:
            raise InputError(
                f"{c.source} was prepared with val_fraction {data.index['val_fraction']}, "
                f"the profile asks for {c.val_fraction}",
                where="data.val_fraction",
                fix=f"set data.val_fraction: {data.index['val_fraction']}, or prepare again",
            )
        where = str(Path(c.source).resolve())  # referenced, not copied (its key is ours)
    else:
        # Prepared in the scratch folder, which outlives a killed run: a rerun resumes there.
        scratch = ctx.scratch / "prepared"
        prepare_corpus(c.source, tok, scratch, val_fraction=c.val_fraction, progress=ctx.progress)
        scratch.rename(ctx.out / "prepared")
        data, where = PreparedData(ctx.out / "prepared"), "prepared"
    splits = data.index["splits"]
    return {
        "outputs": {"data": where},
        "metrics": {
            "dtype": data.index["dtype"],
            **{f"{k}_tokens": v["tokens"] for k, v in splits.items()},
            **{f"{k}_documents": v["documents"] for k, v in splits.items()},
        },
    }


def estimate(node: Any, gflops: float, dtype: str) -> E.Estimate:
    """Tokenizing runs at a measured rate of characters a second, not in FLOPs."""
    src = node.config.source
    n = 0 if is_prepared(src) else source_bytes(src)  # prepared data: referenced, not again
    if n is None:
        return E.Estimate(None, None)
    secs = E.FIXED_S["data"] + n / E.PREPARE_CHARS_PER_S
    return E.Estimate(secs, n * E.SHARD_BYTES_PER_CHAR)


STAGE = Stage(
    "data",
    DataNode,
    run,
    "Tokenize a text source once into token shards (reused while its content stays).",
    libraries=("tokenizers", "pyarrow"),
    compute=None,
    keyed=keyed,
    estimate=estimate,
)
