"""`minitron-deploy generate`: greedy generation from a prompt, to smoke-test a deployable."""

from __future__ import annotations

import argparse

from minitron_deploy.commands.bench import parse_models
from minitron_deploy.console import print_json
from minitron_deploy.engines.cli import add_engine_options, engine_options
from minitron_deploy.engines.registry import ENGINES, get_engine
from minitron_deploy.errors import InputError
from minitron_deploy.model.io import load_tokenizer, read_config

NAME = "generate"
HELP = "Greedy-generate from a text prompt with any engine (smoke test of a checkpoint)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder (or smollm2-135m)")
    p.add_argument(
        "--engine",
        default="torch",
        choices=list(ENGINES),
        help="engine back end (default: built-in torch engine)",
    )
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate")
    p.add_argument("--ignore-eos", action="store_true", help="always generate all tokens")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    add_engine_options(p)  # generated from each engine's options model
    p.add_argument("--json", action="store_true", help='print {"token_ids": [...], "text": ...}')


def run(args: argparse.Namespace) -> int:
    ((_, model_dir),) = parse_models([args.model])
    opts = engine_options(args, args.engine)
    engine = None
    if args.engine == "trtllm":  # a legacy checkpoint's tokenizer lives in its HF folder
        engine = get_engine("trtllm", model_dir, device=args.device, **opts)
        tokenizer_dir = args.tokenizer or engine.hf_dir
    else:
        read_config(model_dir)  # names a missing config.json before anything loads
        tokenizer_dir = args.tokenizer or model_dir
    tok = load_tokenizer(tokenizer_dir)
    ids = tok(args.prompt)["input_ids"]
    if not ids:
        raise InputError("the prompt has no tokens", where="--prompt")
    engine = engine or get_engine(
        args.engine, model_dir, dtype=args.dtype, device=args.device, **opts
    )
    try:
        new = engine.generate([ids], args.max_new_tokens, ignore_eos=args.ignore_eos)[0]
    finally:
        engine.close()
    text = tok.decode(new, skip_special_tokens=True)
    if args.json:
        print_json({"token_ids": new, "text": text, "prompt_ids": ids, "engine": args.engine})
    else:
        print(args.prompt + text)
    return 0
