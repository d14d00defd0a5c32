"""Settings of downstream evaluation (lm-evaluation-harness) in a profile's `eval` section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from minitron_deploy.evaluation.offline_tasks import TASKS


class EvalConfig(BaseModel):
    """Downstream tasks run on the teacher and on every variant's final model (cached per
    model); the summary reports each score and the share of the teacher's a variant keeps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: list[str] = Field(
        default_factory=lambda: list(TASKS),
        min_length=1,
        description="offline tasks (minitron_cloze_code, minitron_cloze_prose, "
        "minitron_last_word, minitron_next_line), task YAML files or folders, or lm-eval "
        "registry names",
    )
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (task default)")
    limit: int | None = Field(100, ge=1, description="at most this many items per task")
    batch_size: int = Field(8, ge=1, description="sequences per forward call")
    seed: int = Field(0, description="seed of few-shot sampling")

    @field_validator("tasks")
    @classmethod
    def _no_blank(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("task names must not be empty")
        return v
