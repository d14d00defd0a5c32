"""Settings of the compression algorithms: importance estimation and pruning. Torch-free."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minitron_deploy.compress.layers import DEPTH_METRICS
from minitron_deploy.model.layerwise import LAYER_SEQUENTIAL_HELP, LayerSequential

# The names of the depth-metric table, as the Literal the settings validate against.
LayerMetric = Literal[tuple(DEPTH_METRICS)]  # type: ignore[valid-type]

LAYER_TASK = "minitron_cloze_prose"  # layer_metric task_accuracy's default task
LAYER_TASK_LIMIT = 50


def parse_layers(spec: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """'16-31' or '1,3,5-7' (or a list) -> sorted unique layer indices.

    Raises:
        ValueError: a part that is not an index or an ascending range.
    """
    if isinstance(spec, list | tuple):
        return tuple(sorted({int(x) for x in spec}))
    out: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"bad layer list {spec!r}: write e.g. 16-31 or 1,3,5-7") from None
    return tuple(sorted(out))


RANKING_SAMPLES, RANKING_SEQ_LEN = 16, 256  # validation text that ranks layers by loss


class ImportanceConfig(BaseModel):
    """Settings of the importance pass (Minitron P1 defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_samples: int = Field(1024, gt=0, description="calibration sequences")
    seq_len: int = Field(512, gt=1, description="tokens per calibration sequence")
    seed: int = Field(0, description="seed for sampling calibration documents")
    batch_agg: Literal["l2", "mean", "var"] = Field(
        "l2", description="aggregation over samples (P1 Table 11: l2 is best)"
    )
    seq_agg: Literal["mean", "l2", "var"] = Field(
        "mean", description="aggregation over the sequence; mean is of |activation|"
    )
    mlp_activation: Literal["pre", "down_input"] = Field(
        "pre",
        description="MLP neuron activation: 'pre' = gate_proj output x@W1.T (paper), "
        "'down_input' = silu(gate)*up, the input of down_proj (reference code)",
    )
    include_final_norm: bool = Field(
        False, description="also add the final RMSNorm's output to the embedding-channel scores"
    )
    micro_batch: int = Field(8, gt=0, description="sequences per forward call")
    layer_loss_blocks: tuple[int, ...] = Field(
        (),
        description="block sizes K for LM-loss layer ranking on validation data "
        "(drop every contiguous block of K layers); empty = skip",
    )
    val_samples: int = Field(
        64, gt=0, description="validation sequences for loss-based ranking (layer_loss_blocks)"
    )
    layer_sequential: LayerSequential = Field(
        "auto", exclude=True, description=LAYER_SEQUENTIAL_HELP
    )


class PruneConfig(BaseModel):
    """Target sizes (None = keep the source size) and how to choose what to keep."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int | None = Field(None, gt=0, description="embedding channels to keep")
    intermediate_size: int | None = Field(None, gt=0, description="MLP neurons to keep per layer")
    num_attention_heads: int | None = Field(
        None,
        gt=0,
        description="query heads to keep (default: the source's heads per KV group x the kept "
        "KV groups)",
    )
    num_key_value_heads: int | None = Field(
        None, gt=0, description="KV groups to keep (whole groups dropped by group score)"
    )
    num_layers: int | None = Field(None, gt=0, description="layers to keep, chosen by layer_metric")
    drop_layers: tuple[int, ...] | None = Field(
        None, description="explicit layer indices to drop (list or '16-31,40' ranges)"
    )
    layer_metric: LayerMetric = Field(  # type: ignore[valid-type]
        "block_loss",
        description="depth choice for num_layers: "
        + "; ".join(f"{m.name} = {m.help}" for m in DEPTH_METRICS.values()),
    )
    layer_task: str | None = Field(
        None,
        description=f"task_accuracy: the lm-eval task (offline task, YAML path or registry "
        f"name; default {LAYER_TASK})",
    )
    layer_task_limit: int | None = Field(
        None,
        ge=1,
        description=f"task_accuracy: items of layer_task per candidate block "
        f"(default {LAYER_TASK_LIMIT})",
    )
    selection: Literal["importance", "random"] = Field(
        "importance", description="keep the most important units, or random ones (a baseline)"
    )
    seed: int = Field(0, description="seed of the random selection and of validation sampling")
    val_samples: int | None = Field(
        None,
        gt=0,
        description=f"validation sequences for loss-based layer ranking "
        f"(default {RANKING_SAMPLES})",
    )
    val_seq_len: int | None = Field(
        None,
        gt=1,
        description=f"tokens per validation sequence for ranking (default {RANKING_SEQ_LEN})",
    )

    @field_validator("drop_layers", mode="before")
    @classmethod
    def _parse_drop(cls, v: Any) -> Any:
        return None if v is None else parse_layers(v)

    @model_validator(mode="after")
    def _one_depth_option(self) -> PruneConfig:
        if self.num_layers is not None and self.drop_layers is not None:
            raise ValueError("give num_layers or drop_layers, not both")
        return self

    @property
    def ranking_rows(self) -> tuple[int, int]:
        """(sequences, tokens per sequence) of the validation text that ranks layers."""
        return self.val_samples or RANKING_SAMPLES, self.val_seq_len or RANKING_SEQ_LEN

    def without_unused(self, ranks_here: bool) -> PruneConfig:
        """This config with the settings that will not be read reset (ranking settings when
        no layers are ranked by loss here; the seed when nothing is random or sampled), so
        they do not change artifact keys."""
        update: dict[str, Any] = {}
        if DEPTH_METRICS[self.layer_metric].reads != "task" or self.num_layers is None:
            update.update(layer_task=None, layer_task_limit=None)
        if not ranks_here:
            update.update(val_samples=None, val_seq_len=None)
            if self.selection != "random":
                update["seed"] = 0
        return self.model_copy(update=update)

    @property
    def task_ranking(self) -> tuple[str, int]:
        """(task, items per candidate block) of layer_metric task_accuracy."""
        return self.layer_task or LAYER_TASK, self.layer_task_limit or LAYER_TASK_LIMIT

    @property
    def ranks_layers_by_loss(self) -> bool:
        """Whether the depth choice needs validation losses (num_layers with a loss metric)."""
        return (
            self.num_layers is not None
            and self.selection == "importance"
            and DEPTH_METRICS[self.layer_metric].ranks_by_loss
        )
