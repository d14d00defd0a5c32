"""One error hierarchy. Every user-facing failure says what failed, where, and how to fix it."""

from __future__ import annotations


class MinitronError(Exception):
    """A failure the user can fix. The CLI prints it as one line and exits with code 2.

    Args:
        what: what went wrong, naming the offending value.
        where: the file, option or field it came from.
        fix: how to fix it.
    """

    exit_code = 2

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
    """Bad user input: a missing file, an invalid checkpoint, an impossible target."""


class ConfigError(MinitronError):
    """An invalid profile or option combination."""


class DependencyError(MinitronError):
    """An optional package or hardware feature is missing."""


class StageError(MinitronError):
    """A pipeline stage failed."""
