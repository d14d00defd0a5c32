"""One error hierarchy. Every user-facing failure says what failed, where, and how to fix it.

Exit codes: 2 means the user's input is wrong (`InputError`, `ConfigError`): a bad path, option,
profile value or shape; found before any work starts, nothing was written; found by a pipeline
stage while `run` / `search` runs, that stage's code is the command's (earlier stages stay
cached). 1 means something failed that is not the input's fault (`StageError`,
`DependencyError`, any other exception): a stage, an external tool, a missing package, the
network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class MinitronError(Exception):
    """A failure with a one-line explanation. The CLI prints it and exits with `exit_code`.

    Args:
        what: what went wrong, naming the offending value.
        where: the file, option or field it came from.
        fix: how to fix it.
    """

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"(in {self.where})")
        msg = " ".join(parts)
        if self.fix:
            msg += f"; fix: {self.fix}"
        return msg


class InputError(MinitronError):
    """Bad user input: a missing file, an invalid checkpoint, an impossible target (exit 2)."""

    exit_code = 2


class ConfigError(InputError):
    """An invalid profile or option combination (exit 2)."""


class DependencyError(MinitronError):
    """An optional package, tool or hardware feature is missing (exit 1)."""


class StageError(MinitronError):
    """A stage or an external tool failed on valid input (exit 1)."""


def validation_problems(err: ValidationError) -> list[tuple[tuple, str]]:
    """(location, message) for every problem of a pydantic `ValidationError`.

    Locations are tuples of field names and list indices, without pydantic's union-branch
    tags; messages name the offending value.
    """
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] not in ("missing", "extra_forbidden") and "input" in e:
            value = e["input"]
            if not isinstance(value, dict | list):
                msg += f" (got {value!r})"
        out.append((loc, msg))
    return out


def config_error(
    err: ValidationError,
    what: str,
    *,
    name: Any = None,
    where: str | None = None,
    fix: str | None = None,
) -> ConfigError:
    """One `ConfigError` listing every problem of `err`.

    Args:
        err: the pydantic error.
        what: the subject, e.g. "invalid distillation settings".
        name: maps a location tuple to the name the user knows (an option such as `--lr`);
            default: the dotted field path.
        where: where the settings came from.
        fix: how to fix them.
    """
    name = name or (lambda loc: ".".join(map(str, loc)) or "settings")
    problems = "; ".join(f"{name(loc)}: {msg}" for loc, msg in validation_problems(err))
    return ConfigError(f"{what}: {problems}", where=where, fix=fix)
