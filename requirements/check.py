#!/usr/bin/env python3
"""Compare a venv's installed packages with the lock files it was built from.

    python3 requirements/check.py .venv requirements/main.lock requirements/smollm2.lock
    python3 requirements/check.py .venv-compat requirements/compat.lock

Prints the differences (names normalised as PEP 503 does: zope.event == zope-event) and exits 1
when there are any; the project itself (installed editable) and pip (pinned in the Makefile) are
left out. Standard library only.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def pins(lines: list[str]) -> dict[str, str]:
    """{normalised name: version} of `name==version` lines."""
    out = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line.strip())
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    venv, locks = Path(argv[0]), argv[1:]
    locked: dict[str, str] = {}
    for lock in locks:
        locked.update(pins(Path(lock).read_text().splitlines()))
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    installed = pins(frozen)
    installed.pop("pip", None)
    diff = [
        f"{name}: locked {locked.get(name, '-')}, installed {installed.get(name, '-')}"
        for name in sorted(set(locked) | set(installed))
        if locked.get(name) != installed.get(name)
    ]
    for line in diff:
        print(line)
    print(f"{venv}: {len(installed)} packages, {len(locked)} locked, {len(diff)} differences")
    return 1 if diff else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
