"""The export format table: one record per format, declared in the format's own module.

To add a format: a module in this package that defines `write` (and a reader for the
read-back check) and a `FORMAT = ExportFormat(...)` record, and one entry in `FORMAT_MODULES`.
The profile schema, the `export` command's choices, `doctor`, the read-back check and the
pipeline all read these records. Importing this module imports the format modules, which
import nothing heavy at module level.
"""

from __future__ import annotations

import importlib

from minitron_deploy.export.format import ExportFormat

# Full module names: the pipeline's code digests find the modules a stage uses by these strings.
FORMAT_MODULES = (
    "minitron_deploy.export.hf",
    "minitron_deploy.export.hf_fp8",
    "minitron_deploy.export.trtllm_ckpt",
    "minitron_deploy.export.onnx",
)


def _load() -> dict[str, ExportFormat]:
    out = {}
    for name in FORMAT_MODULES:
        fmt = importlib.import_module(name).FORMAT
        out[fmt.name] = fmt
    return out


FORMATS: dict[str, ExportFormat] = _load()
