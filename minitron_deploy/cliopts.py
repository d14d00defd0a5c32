"""Command-line options generated from the pydantic config models, so a setting is declared once.

`add_options(parser, Model)` adds one `--field-name` option per field, with the field's
description and default as help, `choices` for literals, `--flag` / `--no-flag` for booleans and
comma lists for tuples. Options the user does not give stay absent (`argparse.SUPPRESS`), so
`build(Model, args)` leaves them at the model's defaults and `model_fields_set` says what was set.
Validation problems become one `ConfigError` that names the options.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from minitron_deploy.errors import config_error


def flag(field: str, rename: dict[str, str] | None = None) -> str:
    """The option name of a field: `--seq-len` for `seq_len` (or its renamed form)."""
    return "--" + (rename or {}).get(field, field).replace("_", "-")


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _list_parser(item: Callable[[str], Any], choices: Iterable[Any] | None) -> Callable:
    allowed = list(choices) if choices is not None else None

    def parse(text: str) -> list[Any]:
        values = [item(x.strip()) for x in text.split(",") if x.strip()]
        if allowed is not None:
            bad = [v for v in values if v not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"{bad} not in {allowed}")
        return values

    return parse


def _kind(ann: Any) -> tuple[Callable | None, list | None, bool]:
    """(parser of one value, choices, is a list) for an annotation; parser None = unsupported."""
    ann = _strip_optional(ann)
    origin = typing.get_origin(ann)
    if origin is Literal:
        choices = list(typing.get_args(ann))
        return type(choices[0]), choices, False
    if origin in (tuple, list):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        item = _strip_optional(args[0]) if args else str
        if typing.get_origin(item) is Literal:
            choices = list(typing.get_args(item))
            return _list_parser(type(choices[0]), choices), None, True
        if item in (int, float, str):
            return _list_parser(item, None), None, True
        return None, None, False
    if ann in (int, float, str, Path):
        return ann, None, False
    return None, None, False


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    exclude: Iterable[str] = (),
    rename: dict[str, str] | None = None,
    parsers: dict[str, Callable[[str], Any]] | None = None,
    metavars: dict[str, str] | None = None,
    choices: dict[str, list[Any]] | None = None,
    dest_prefix: str = "",
) -> None:
    """Add one option per field of `model` (except `exclude`).

    Args:
        parser: the (sub)parser or argument group.
        model: a pydantic model class.
        exclude: fields the command sets itself.
        rename: field -> option stem, e.g. {"val_seq_len": "seq_len"}.
        parsers: field -> function parsing the option's text (for structured values).
        metavars: field -> metavar.
        choices: field -> allowed values (for fields typed `str` whose values come from a table).
        dest_prefix: prefix of the parsed value's name in the namespace, so that two models
            with a field of the same name (two engines' options) can share one parser; pass
            the same prefix to `given` and `build`.
    """
    parsers, metavars, extra_choices = parsers or {}, metavars or {}, choices or {}
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        opt = flag(name, rename)
        desc = (info.description or name).replace("%", "%%")
        default = info.get_default(call_default_factory=True)
        common: dict[str, Any] = {"dest": dest_prefix + name, "default": argparse.SUPPRESS}
        ann = _strip_optional(info.annotation)
        if ann is bool:
            if default is None:  # three states: --flag, --no-flag, or the model's own choice
                parser.add_argument(opt, action=argparse.BooleanOptionalAction, help=desc, **common)
            elif default is True:
                parser.add_argument(
                    "--no-" + opt[2:],
                    action="store_false",
                    help=f"{desc} (on unless given)",
                    **common,
                )
            else:
                parser.add_argument(opt, action="store_true", help=desc, **common)
            continue
        if name in parsers:
            fn, choices, is_list = parsers[name], None, False
        else:
            fn, choices, is_list = _kind(info.annotation)
        if fn is None:
            raise TypeError(f"{model.__name__}.{name}: no option parser for {info.annotation}")
        shown = ",".join(map(str, default)) if isinstance(default, tuple | list) else default
        help_text = desc + (f" (default: {shown})" if default not in (None, "", (), []) else "")
        kw: dict[str, Any] = {"type": fn, "help": help_text, **common}
        choices = extra_choices.get(name, choices)
        if choices is not None:
            kw["choices"] = choices
        if name in metavars:
            kw["metavar"] = metavars[name]
        elif is_list:
            kw["metavar"] = "A,B"
        elif dest_prefix:  # argparse would show the prefixed dest
            kw["metavar"] = name.upper()
        parser.add_argument(opt, **kw)


def given(
    args: argparse.Namespace, model: type[BaseModel], dest_prefix: str = ""
) -> dict[str, Any]:
    """The fields of `model` the user gave on the command line (added with `dest_prefix`)."""
    n = len(dest_prefix)
    return {
        k[n:]: v
        for k, v in vars(args).items()
        if k.startswith(dest_prefix) and k[n:] in model.model_fields
    }


def build(
    model: type[BaseModel],
    args: argparse.Namespace,
    *,
    what: str,
    rename: dict[str, str] | None = None,
    dest_prefix: str = "",
    **extra: Any,
):
    """An instance of `model` from the given options plus `extra` fields.

    Raises:
        ConfigError: every invalid option at once, named as the user typed it.
    """
    values = {**given(args, model, dest_prefix), **extra}
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise config_error(
            e,
            what,
            name=lambda loc: flag(str(loc[0]), rename) if loc else "options",
            fix="see the command's --help",
        ) from None
