"""`minitron-deploy export --model DIR --format FMT --out DIR`: write a deployable checkpoint."""

from __future__ import annotations

import argparse

from minitron_deploy.cliopts import add_options, given
from minitron_deploy.console import info, print_json
from minitron_deploy.data.refs import DataRef
from minitron_deploy.errors import InputError, config_error
from minitron_deploy.export import ExportConfig, export_model
from minitron_deploy.export.format import ExportSettings
from minitron_deploy.export.registry import FORMATS
from minitron_deploy.fsutil import check_output_dir

NAME = "export"
HELP = "Export a Llama checkpoint in a deployment format (see --format)."
RENAME = {"tp_size": "tp"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="source HF checkpoint folder")
    p.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="; ".join(f"{k}: {f.help}" for k, f in FORMATS.items()),
    )
    p.add_argument(
        "--calib-data",
        default=None,
        help="FP8 calibration text: path or builtin:python-stdlib (required for FP8); its train "
        "split is used",
    )
    add_options(
        p.add_argument_group("format settings"),
        ExportSettings,
        rename=RENAME,
        choices={"dtype": ["bf16", "fp8"]},
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")


def run(args: argparse.Namespace) -> int:
    import sys

    from pydantic import ValidationError

    check_output_dir(args.out, overwrite=args.overwrite)
    spec = FORMATS[args.format]
    chosen = given(args, ExportSettings)
    dtype = chosen.pop("dtype", None)
    if dtype is not None and dtype not in spec.dtypes:
        raise InputError(
            f"--dtype {dtype} does not apply to --format {args.format} (it takes {spec.dtypes})",
            fix="use --format hf-fp8 for an FP8 HF checkpoint",
        )
    try:  # the profile section's defaults and rules, for this one format
        section = ExportConfig(formats=[args.format], trtllm_dtype=dtype or "bf16", **chosen)
    except ValidationError as e:
        raise config_error(e, "invalid export options") from None
    settings = section.settings(args.format)
    calib = DataRef(source=args.calib_data, split="train") if args.calib_data else None
    summary = export_model(
        args.model,
        args.out,
        args.format,
        settings,
        calib,
        overwrite=args.overwrite,
        given={*chosen, *(["dtype"] if dtype else [])},
        command=" ".join(sys.argv),
    )
    v = summary.get("verify")
    check = ""
    if v and "max_abs_diff" in v:
        check = (
            f"; read back: max|dlogit| {v['max_abs_diff']:.3g}, top-1 agreement "
            f"{v['top1_agreement']:.3f}, KL/token {v['kl_per_token']:.3g}"
        )
    info(f"wrote {args.format} ({settings.dtype}) to {args.out} in {summary['seconds']} s{check}")
    if args.json:
        print_json(summary)
    return 0
