"""Loading profiles: YAML → overrides → defaults merged into variants → validated `Profile`.

Every problem is collected and reported together, each with its YAML path and line, e.g.
`variants[1].prune.hidden_size (line 23): ...`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from minitron_deploy.errors import ConfigError, validation_problems
from minitron_deploy.pipeline.stages import default_sections
from minitron_deploy.profile.checks import semantic_problems
from minitron_deploy.profile.schema import Profile, VariantConfig

# Sections `defaults:` may set, and those also given to a variant that names none: the stage
# records' `defaults` ("merge" / "fill").
MERGED_SECTIONS = default_sections()
FILLED_SECTIONS = default_sections(how=("fill",))


class ProfileErrors(ConfigError):
    """Several profile problems at once; `one_line` lists them all."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        n = len(problems)
        super().__init__(
            f"{n} problem{'s' * (n != 1)} in profile:\n  - " + "\n  - ".join(problems),
            where=source,
            fix="edit the profile (schema: profiles/schema.json)",
        )

    def one_line(self) -> str:  # the list reads better than one long line
        return f"profile {self.where} is invalid: {self.what}"


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each YAML path (tuple of keys / indices) to its 1-based line."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[(*path, k.value)] = k.start_mark.line + 1
                walk(v, (*path, k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def format_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _set(d: dict, dotted: str, value: Any) -> None:
    """Set `a.b.0.c` in nested dicts and lists, creating missing dicts on the way."""
    *path, last = dotted.split(".")
    cur: Any = d
    for k in path:
        cur = cur[int(k)] if isinstance(cur, list) else cur.setdefault(k, {})
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set a.b=c` overrides. Values are parsed as YAML; a variant may be addressed by
    its name: `variants.width.distill.steps=10`."""
    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"--set {item!r} is not of the form key.path=value",
                fix="e.g. --set variants.width.distill.steps=20",
            )
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > 1 and parts[0] == "variants" and not parts[1].isdigit():
            names = [v.get("name") for v in data.get("variants", []) if isinstance(v, dict)]
            if parts[1] not in names:
                raise ConfigError(
                    f"--set {key}: no variant named {parts[1]!r}", fix=f"variants are {names}"
                )
            parts[1] = str(names.index(parts[1]))
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set(data, ".".join(parts), value)
    return data


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else v
        return out
    return copy.deepcopy(over)


def merge_defaults(data: dict) -> dict:
    """Merge the profile's `defaults:` sections into every variant that has that section
    (and the `FILLED_SECTIONS`, export, package, bench and importance, into every variant)."""
    data = copy.deepcopy(data)
    defaults = data.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        return data
    for v in data.get("variants") or []:
        if not isinstance(v, dict):
            continue
        for section, dflt in defaults.items():
            if section in v and isinstance(v[section], dict) and isinstance(dflt, dict):
                v[section] = _deep_merge(dflt, v[section])
            elif section in v and v[section] is None:
                pass  # explicit null switches the section off
            elif section not in v and section in FILLED_SECTIONS:
                v[section] = copy.deepcopy(dflt)
    return data


def _section_models() -> dict[str, type]:
    fields = VariantConfig.model_fields
    return {name: _model_of(fields[name].annotation) for name in MERGED_SECTIONS}


def _model_of(ann: Any) -> type | None:
    """The pydantic model class inside an annotation (X, X | None, list[X])."""
    import typing

    from pydantic import BaseModel

    stack = [ann]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
        stack.extend(typing.get_args(a))
    return None


def _names_at(loc: tuple) -> list[str]:
    """The keys allowed at YAML path `loc` (field names and aliases), for "did you mean"."""

    if loc == ("defaults",):
        return list(MERGED_SECTIONS)
    if loc and loc[0] == "defaults":
        cls, rest = _section_models().get(loc[1]), loc[2:]
    else:
        cls, rest = Profile, loc
    for part in rest:
        if cls is None:
            return []
        if isinstance(part, int):
            continue
        field = next((f for n, f in cls.model_fields.items() if part in (n, f.alias)), None)
        cls = _model_of(field.annotation) if field is not None else None
    if cls is None:
        return []
    return [f.alias or n for n, f in cls.model_fields.items()]


def _suggest(loc: tuple) -> str:
    import difflib

    if not loc or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], _names_at(loc[:-1]), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _defaults_problems(defaults: Any) -> list[tuple[tuple, str]]:
    """Each `defaults:` section validated on its own, located at its own lines."""
    from pydantic import ValidationError

    if defaults is None:
        return []
    if not isinstance(defaults, dict):
        return [(("defaults",), "must be a mapping of sections")]
    models = _section_models()
    out: list[tuple[tuple, str]] = []
    for section, body in defaults.items():
        if section not in models:
            out.append(
                (("defaults", section), f"unknown section; use some of {list(MERGED_SECTIONS)}")
            )
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            out.append((("defaults", section), "must be a mapping of settings"))
            continue
        try:
            models[section].model_validate(body)
        except ValidationError as e:
            out += [(("defaults", section, *loc), msg) for loc, msg in validation_problems(e)]
    return out


def load_profile(
    path: str | Path,
    overrides: list[str] | None = None,
    check_source: bool = True,
    source_shape: dict | None = None,
):
    """Read, merge and validate a profile; raise `ProfileErrors` listing every problem.

    `check_source=False` skips the checks that need the source model and the text at hand;
    `source_shape` (a config dict) stands in for the source's config, so a cluster profile can
    be checked and planned on a laptop.

    Each problem is reported once, at the line that holds the mistake: a typo under
    `defaults:` at its own line (not at every variant it is merged into); an unknown key
    with the closest allowed name.
    """
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"profile {path} does not exist", fix="see profiles/ for examples")

    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"profile is not valid YAML: {e}", where=str(path)) from e
    if not isinstance(data, dict):
        raise ConfigError("profile must be a YAML mapping", where=str(path))
    data = apply_overrides(data, overrides or [])
    defaults = data.get("defaults")
    merged = merge_defaults(data)
    lines = _yaml_lines(text)
    found = _defaults_problems(defaults)

    def from_defaults(loc: tuple) -> bool:
        """A variant setting that the variant's own YAML does not hold came from defaults."""
        if len(loc) < 4 or loc[0] != "variants" or not isinstance(defaults, dict):
            return False
        section = defaults.get(loc[2])
        return isinstance(section, dict) and loc[3] in section and loc[:4] not in lines

    profile = None
    try:
        profile = Profile.model_validate(merged)
    except ValidationError as e:
        found += [(loc, msg) for loc, msg in validation_problems(e) if not from_defaults(loc)]
    found += semantic_problems(
        merged, base_dir=path.parent, check_source=check_source, source_shape=source_shape
    )
    # "did you mean": an unknown key close to a required one replaces the required one's error
    suggested: dict[tuple, str] = {}
    for loc, msg in found:
        if msg.startswith("Extra inputs") and (hint := _suggest(loc)):
            suggested[(*loc[:-1], hint.split("'")[1])] = hint
    problems: list[tuple[int, str]] = []
    for loc, msg in found:
        if msg == "Field required" and loc in suggested:
            continue
        if msg.startswith("Extra inputs"):
            msg = "unknown key" + _suggest(loc)
        line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
        item = f"{format_path(loc)}" + (f" (line {line})" if line else "") + f": {msg}"
        if item not in [p for _, p in problems]:
            problems.append((line or 10**9, item))
    if problems or profile is None:
        raise ProfileErrors(str(path), [p for _, p in sorted(problems, key=lambda x: x[0])])
    return profile
