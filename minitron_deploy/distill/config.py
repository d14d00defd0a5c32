"""The distillation stage's configuration (defaults from P2 Table 4, scaled to one machine)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DistillConfig(BaseModel):
    """Settings of one distillation (or teacher-correction / CE fine-tuning) run.

    Defaults follow the papers: forward KL at temperature 1.0, no cross-entropy term, logit
    loss only; peak LR 1e-4 with 40 linear warm-up steps, cosine decay to 1e-5 (P2 Table 4).
    `global_batch` must equal `micro_batch` x accumulation steps x world size.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(200, ge=1, description="optimizer steps to run")
    global_batch: int = Field(8, ge=1, description="sequences per optimizer step, all ranks")
    micro_batch: int = Field(
        4, ge=1, description="sequences per forward pass on one rank (accumulated up to global)"
    )
    seq_len: int = Field(256, ge=2, description="tokens per training sequence")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (P2 Table 4)")
    min_lr: float | None = Field(
        None,
        ge=0,
        description="final learning rate of the cosine decay; default lr / 10 (P2: 1e-4 -> 1e-5)",
    )
    warmup_steps: int = Field(40, ge=0, description="linear warm-up steps from 0 to `lr`")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2)")
    grad_clip: float = Field(1.0, ge=0, description="max global gradient L2 norm; 0 disables")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the logit KL")
    top_k: int | None = Field(
        None, ge=1, description="keep only the teacher's top-K logits (P1: K<=100 hurts); None=all"
    )
    ce_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="weight of next-token cross-entropy in the logit loss "
        "((1-w)*KL + w*CE); 1.0 means plain CE fine-tuning and skips the teacher",
    )
    intermediate: bool = Field(
        False, description="add cosine losses on mapped layers' hidden states (P1, depth pruning)"
    )
    layer_map: list[tuple[int, int]] | None = Field(
        None,
        description="(teacher layer, student layer) pairs, 0-based, negatives count from the "
        "end; None = [(-2, -2)], the best mapping of P1 Table 17",
    )
    embedding_loss: bool = Field(
        False, description="add a cosine loss between the embedding outputs (with intermediate)"
    )
    eval_every: int = Field(50, ge=0, description="validate every N steps (0: only start/end)")
    eval_samples: int = Field(32, ge=1, description="validation sequences per evaluation")
    checkpoint_every: int = Field(50, ge=0, description="checkpoint every N steps (0: never)")
    keep_checkpoints: int | None = Field(
        2,
        ge=1,
        description="how many recent checkpoints to keep (none written with checkpoint_every 0: "
        "then null, so it does not change keys)",
    )
    seed: int = Field(0, description="seed for data order and any randomness")
    kl_chunk_tokens: int = Field(
        1024, ge=1, description="tokens per chunk of the fused lm_head + KL computation"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute decoder layers in backward to save activation memory"
    )
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        "auto",
        description="compute dtype: auto (bf16 autocast where the device computes bf16 "
        "natively: CUDA with bf16, CPUs with AVX512-BF16/AMX; else fp32), "
        "bfloat16 or float32; master weights and optimizer state stay fp32",
    )
    teacher_correction: bool = Field(
        False,
        description="P2 teacher correction: plain CE fine-tuning of the teacher itself on "
        "the distillation data (student_dir is ignored); P2 used 1/5 of the original peak LR",
    )
    teacher_check: bool = Field(
        True,
        description="before step 0, require a finite teacher validation loss below "
        "`teacher_check_ratio` x ln(vocab); disable for random test teachers",
    )
    teacher_check_ratio: float = Field(
        0.8, gt=0, le=1, description="teacher val loss must be below this fraction of ln(vocab)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_checkpoints(cls, data: Any) -> Any:
        """keep_checkpoints is not read when no checkpoint is written: null."""
        if isinstance(data, dict) and data.get("checkpoint_every") == 0:
            data = {**data, "keep_checkpoints": None}
        return data

    def without_checkpoints(self) -> DistillConfig:
        """The same run writing no checkpoint (`model_copy` skips `_no_checkpoints`)."""
        return self.model_copy(update={"checkpoint_every": 0, "keep_checkpoints": None})

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        if self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch={self.global_batch} must be a multiple of "
                f"micro_batch={self.micro_batch}"
            )
        if self.embedding_loss and not self.intermediate:
            raise ValueError("embedding_loss needs intermediate=True")
        return self

    @property
    def final_lr(self) -> float:
        """The LR the cosine decay ends at."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The (teacher, student) layer mapping in effect."""
        return list(self.layer_map) if self.layer_map else [(-2, -2)]

    @property
    def uses_teacher(self) -> bool:
        """Whether steps need the teacher's forward pass."""
        return not self.teacher_correction and (self.ce_weight < 1.0 or self.intermediate)
