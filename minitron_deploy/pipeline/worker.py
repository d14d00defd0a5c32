"""One rank of a launched stage: `python -m minitron_deploy.pipeline.worker JOB` (under torchrun).

Reads the job the runner wrote (`launcher.write_job`), rebuilds the stage's typed config and
its input artifacts from the store, and runs it through `execute` (as `run` does in its own
process) with this rank's place (RANK / WORLD_SIZE from torchrun). Rank 0 writes the content
into the job's `out/` and `result.json`; a failure on rank 0 writes `error.json` with its exit
code (2: bad input).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from minitron_deploy.errors import MinitronError
from minitron_deploy.fsutil import atomic_write_json
from minitron_deploy.launch.launcher import ERROR, RESULT
from minitron_deploy.pipeline.context import jsonable
from minitron_deploy.pipeline.execute import execute, job_inputs, open_context
from minitron_deploy.pipeline.stages import STAGES


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    job_path = Path(args[0])
    job = json.loads(job_path.read_text())
    launch_dir = job_path.parent
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        spec = STAGES[job["stage"]]
        config = spec.config.model_validate(job["config"])
        log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
        ctx = open_context(job, config, job_inputs(job), log, rank, world)
        result = execute(spec, ctx)
        if rank == 0:
            atomic_write_json(launch_dir / RESULT, jsonable(result))
        return 0
    except BaseException as e:
        if rank == 0:
            code = e.exit_code if isinstance(e, MinitronError) else 1
            msg = e.one_line() if isinstance(e, MinitronError) else f"{type(e).__name__}: {e}"
            atomic_write_json(
                launch_dir / ERROR,
                {"error": msg, "exit_code": code, "node": job.get("node"),
                 "traceback": traceback.format_exc(limit=8)},
            )  # fmt: skip
        print(f"rank {rank}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2 if isinstance(e, MinitronError) and e.exit_code == 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
