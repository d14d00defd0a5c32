"""Loading profiles: YAML → overrides → defaults merged into variants → validated `Profile`.

Every problem is collected and reported together, each with its YAML path and line, e.g.
`variants[1].prune.hidden_size (line 23): ...`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from minitron_deploy.errors import ConfigError

MERGED_SECTIONS = ("importance", "prune", "distill", "export", "package", "bench")


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
    """Merge the profile's `defaults:` sections into every variant that has that section."""
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
            elif section not in v and section in ("export", "package", "bench", "importance"):
                v[section] = copy.deepcopy(dflt)
    data["_defaults"] = defaults
    return data


def _line_of(problem: str) -> int:
    import re

    m = re.search(r"\(line (\d+)\)", problem)
    return int(m.group(1)) if m else 10**9


def load_profile(path: str | Path, overrides: list[str] | None = None, check_source: bool = True):
    """Read, merge and validate a profile; raise `ProfileErrors` listing every problem."""
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"profile {path} does not exist", fix="see profiles/ for examples")
    from minitron_deploy.config import Profile, semantic_problems

    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"profile is not valid YAML: {e}", where=str(path)) from e
    if not isinstance(data, dict):
        raise ConfigError("profile must be a YAML mapping", where=str(path))
    data = apply_overrides(data, overrides or [])
    data = merge_defaults(data)
    defaults = data.pop("_defaults", {})
    lines = _yaml_lines(text)
    problems: list[str] = []

    def where(loc: tuple) -> str:
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        if line is None and loc and loc[0] == "variants":
            section = next((p for p in loc if p in defaults), None)
            if section:
                return f"{format_path(loc)} (from defaults.{section})"
        return f"{format_path(loc)}" + (f" (line {line})" if line else "")

    profile = None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            problems.append(f"{where(loc)}: {err['msg']}")
    for loc, msg in semantic_problems(data, base_dir=path.parent, check_source=check_source):
        text = f"{where(loc)}: {msg}"
        if text not in problems:
            problems.append(text)
    if problems or profile is None:
        raise ProfileErrors(str(path), sorted(problems, key=_line_of))

    return profile
