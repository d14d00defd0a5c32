"""`minitron-deploy data prepare|info|verify`: tokenise a corpus once into token shards;
`data sample`: text a model writes by itself (`distill.teacher_text`); `data corpora`."""

from __future__ import annotations

import argparse

from minitron_deploy.console import info, print_json
from minitron_deploy.data.corpora import CORPORA, DOMAINS, MB, corpus_files
from minitron_deploy.data.prepare import prepare_corpus
from minitron_deploy.data.shards import PreparedData
from minitron_deploy.data.text import iter_documents
from minitron_deploy.distill.teacher_text import SampleSettings, sample_text
from minitron_deploy.errors import ConfigError
from minitron_deploy.model.io import load_tokenizer
from minitron_deploy.model.teacher import resolve_model

NAME = "data"
HELP = (
    "Prepare a corpus once (token shards + index), show it, verify it; sample a model's own "
    "text; list built-in corpora."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    prep = sub.add_parser(
        "prepare",
        help="tokenise text files, folders, JSONL, Parquet/Arrow into token shards",
        description="Tokenise SRC (comma-separated paths or builtin:<name>) with a model's "
        "fast tokenizer into memory-mapped token shards and an index. An interrupted "
        "preparation resumes when run again; the result is used as --data D (commands) or "
        "data.training: D (profiles).",
    )
    prep.add_argument("source", metavar="SRC[,SRC...]", help="text sources")
    prep.add_argument(
        "--tokenizer", required=True, help="model folder (or builtin:<name>) whose tokenizer to use"
    )
    prep.add_argument("--out", required=True, help="the prepared folder")
    prep.add_argument(
        "--val-fraction", type=float, default=0.05, help="share of documents held out (0.05)"
    )
    prep.add_argument(
        "--shard-tokens",
        type=int,
        default=1 << 24,
        help="training tokens per shard; memory is bounded by about one shard (16777216)",
    )
    prep.add_argument("--batch-docs", type=int, default=512, help="documents per tokenizer call")
    prep.add_argument(
        "--overwrite", action="store_true", help="replace a folder prepared from other data"
    )
    prep.add_argument("--json", action="store_true", help="print the index as JSON")
    info = sub.add_parser("info", help="what a prepared folder holds")
    info.add_argument("path", help="the prepared folder")
    info.add_argument("--json", action="store_true")
    ver = sub.add_parser("verify", help="recompute every shard's SHA-256")
    ver.add_argument("path", help="the prepared folder")
    smp = sub.add_parser(
        "sample",
        help="text a model writes by itself (from BOS), as JSONL, to distil on",
        description="Sample rows from the model's BOS token (no prompt; temperature, top-p, no "
        "top-k) into OUT as JSONL batches, resumable. Mix the folder into the training data "
        "with a weight: --data builtin:mixed,OUT*N (its documents count N times in training).",
    )
    smp.add_argument("--model", required=True, help="model folder or builtin:<name>")
    smp.add_argument("--out", required=True, help="the folder of JSONL batches")
    smp.add_argument("--tokens", type=int, required=True, help="new tokens to sample at most")
    smp.add_argument("--batch", type=int, default=64, help="rows per batch (64)")
    smp.add_argument("--max-new-tokens", type=int, default=256, help="tokens per row (256)")
    smp.add_argument("--temperature", type=float, default=1.0, help="(1.0)")
    smp.add_argument("--top-p", type=float, default=0.95, help="(0.95)")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--no-progress", action="store_true")
    smp.add_argument("--json", action="store_true", help="print the summary as JSON")
    cor = sub.add_parser(
        "corpora",
        help="the built-in corpora (builtin:<name>): domains, files, size, tokens",
        description="List the built-in corpora and their domains with files and megabytes of "
        "text read on this machine; with --tokenizer also documents and tokens.",
    )
    cor.add_argument("--tokenizer", help="model folder (or builtin:<name>) to count tokens with")
    cor.add_argument("--json", action="store_true")


def _summary(index: dict) -> str:
    parts = []
    for name, s in index["splits"].items():
        parts.append(
            f"{name} {s['tokens']:,} tokens / {s['documents']:,} documents "
            f"in {len(s['shards'])} shard(s)"
        )
    return f"{'; '.join(parts)} ({index['dtype']}, vocab {index['vocab_size']:,})"


def run(args: argparse.Namespace) -> int:
    if args.action == "prepare":
        if not 0 < args.val_fraction < 1:
            raise ConfigError(f"--val-fraction {args.val_fraction} is not in (0, 1)")
        if args.shard_tokens < 1024 or args.batch_docs < 1:
            raise ConfigError("--shard-tokens must be >= 1024 and --batch-docs >= 1")

        index = prepare_corpus(
            args.source,
            resolve_model(args.tokenizer),
            args.out,
            val_fraction=args.val_fraction,
            shard_tokens=args.shard_tokens,
            batch_docs=args.batch_docs,
            overwrite=args.overwrite,
        )
        info(f"prepared {args.out}: {_summary(index)}")
        info(f"use it as --data {args.out} or in a profile as data.training: {args.out}")
        if args.json:
            print_json(index)
        return 0
    if args.action == "corpora":
        return _corpora(args)
    if args.action == "sample":
        settings = SampleSettings(
            tokens=args.tokens,
            batch=args.batch,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
        res = sample_text(
            resolve_model(args.model), args.out, settings, progress=not args.no_progress
        )
        info(
            f"{args.out}: {res['batches']} batches ({res['made']} sampled now, "
            f"{res['tokens']:,} tokens in {res['seconds']} s)"
        )
        info(f"mix it into training text with a weight: --data builtin:mixed,{args.out}*N")
        if args.json:
            print_json(res)
        return 0

    data = PreparedData(args.path)  # checks sizes and changed shards
    if args.action == "info":
        if args.json:
            print_json(data.index)
        else:
            ix = data.index
            print(f"{args.path}: {_summary(ix)}")
            print(f"  source      {ix['source']} (sha256 {ix['source_sha256'][:16]})")
            print(f"  tokenizer   sha256 {ix['tokenizer_sha256'][:16]}")
            print(f"  val share   {ix['val_fraction']}")
            print(f"  key         {ix['key'][:16]}")
        return 0
    data.verify()
    n = sum(len(s["shards"]) for s in data.index["splits"].values())
    info(f"{args.path}: all {n} shards match their SHA-256")
    return 0


def _corpora(args: argparse.Namespace) -> int:
    tok = None
    if args.tokenizer:
        tok = load_tokenizer(resolve_model(args.tokenizer))
    rows = [domain_stats(name, tok) for name in DOMAINS]
    if args.json:
        print_json({"domains": rows, "corpora": {k: c.members for k, c in CORPORA.items()}})
        return 0
    print("| domain | kind | files | MB of text | documents | tokens | source |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        toks = f"{r['tokens']:,}" if r["tokens"] is not None else "-"
        print(
            f"| {r['domain']} | {r['kind']} | {r['files']:,} | {r['text_mb']:.1f} | "
            f"{r['documents']:,} | {toks} | {r['about']} |"
        )
    print()
    for name, c in CORPORA.items():
        if len(c.members) > 1:
            parts = ", ".join(d + (f" (capped at {cap} MB)" if cap else "") for d, cap in c.members)
            print(f"builtin:{name} = {parts}")
    return 0


def domain_stats(name: str, tokenizer=None) -> dict:
    """Files, megabytes of text, documents (and tokens, given a tokenizer) of one domain."""

    [(_, files)] = corpus_files(name)
    docs = chars = tokens = 0
    batch: list[str] = []
    for d in iter_documents(f"builtin:{name}"):
        docs += 1
        chars += len(d.text)
        if tokenizer is not None:
            batch.append(d.text)
            if len(batch) == 256:
                tokens += sum(len(x) for x in tokenizer(batch)["input_ids"])
                batch = []
    if tokenizer is not None and batch:
        tokens += sum(len(x) for x in tokenizer(batch)["input_ids"])
    return {
        "domain": name,
        "kind": DOMAINS[name].kind,
        "files": len(files),
        "text_mb": chars / MB,
        "documents": docs,
        "tokens": tokens if tokenizer is not None else None,
        "about": DOMAINS[name].about,
    }
