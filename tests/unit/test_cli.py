"""CLI basics: fast torch-free help, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minitron_deploy", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_does_not_import_torch():
    code = (
        "import sys; from minitron_deploy.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'modelopt') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for cmd in ("fetch", "validate", "plan", "run", "cache", "doctor"):
        assert cmd in r.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    r = _run("validate", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
