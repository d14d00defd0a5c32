"""Triton `config.pbtxt` from typed data: dataclasses -> `ModelConfig` protobuf -> text.

Nothing here formats pbtxt by hand. A model is described by `ModelSpec` (plain dataclasses),
turned into Triton's own `inference.ModelConfig` message (from `tritonclient`'s
`model_config_pb2`) and printed with protobuf's `text_format`, so the output always parses
back with the same schema Triton uses to read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minitron_deploy.errors import DependencyError, InputError

DATA_TYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "STRING",
    "BF16",
)


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output.

    Attributes:
        name: tensor name as clients see it.
        data_type: Triton type without the `TYPE_` prefix ("STRING", "INT32", "BOOL", ...).
        dims: shape without the batch dimension (-1 = variable).
        optional: an input a request may leave out.
    """

    name: str
    data_type: str
    dims: tuple[int, ...] = (1,)
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A Triton model's configuration, as typed data.

    Attributes:
        name: model (folder) name.
        backend: "python", "tensorrtllm", or "" for an ensemble (platform "ensemble").
        max_batch_size: 0 disables Triton batching (inputs then carry no batch dim).
        inputs: input tensors.
        outputs: output tensors.
        decoupled: the model may send 0..n responses per request (streaming).
        instance_count: model instances on the CPU (`KIND_CPU`) or GPU (`KIND_GPU`).
        instance_kind: "KIND_CPU", "KIND_GPU" or "KIND_MODEL".
        dynamic_batching: enable Triton's dynamic batcher (needs max_batch_size > 0).
        max_queue_delay_us: how long the batcher may wait to fill a batch.
        parameters: string key/value parameters (`parameters { key value { string_value } }`).
    """

    name: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decoupled: bool = False
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"
    dynamic_batching: bool = True
    max_queue_delay_us: int = 0
    parameters: dict[str, str] = field(default_factory=dict)


def model_config_pb2() -> Any:
    """Triton's `model_config_pb2` module (from `tritonclient[grpc]`).

    Raises:
        DependencyError: tritonclient is not installed.
    """
    try:
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError as e:
        raise DependencyError(
            f"writing Triton configs needs tritonclient's protobuf schema ({e})",
            fix="pip install 'tritonclient[grpc]' (or the project's [deploy] extra)",
        ) from e
    return pb


def _tensor(msg: Any, spec: TensorSpec, pb: Any) -> None:
    if spec.data_type not in DATA_TYPES:
        raise InputError(f"unknown Triton data type {spec.data_type!r} for tensor {spec.name}")
    msg.name = spec.name
    msg.data_type = pb.DataType.Value(f"TYPE_{spec.data_type}")
    msg.dims.extend(spec.dims)
    if spec.optional:
        msg.optional = True


def to_message(spec: ModelSpec) -> Any:
    """The `inference.ModelConfig` protobuf for `spec`."""
    pb = model_config_pb2()
    cfg = pb.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if spec.backend:
        cfg.backend = spec.backend
    else:
        cfg.platform = "ensemble"
    for t in spec.inputs:
        _tensor(cfg.input.add(), t, pb)
    for t in spec.outputs:
        _tensor(cfg.output.add(), t, pb)
    if spec.decoupled:
        cfg.model_transaction_policy.decoupled = True
    if spec.backend:
        group = cfg.instance_group.add()
        group.count = spec.instance_count
        group.kind = pb.ModelInstanceGroup.Kind.Value(spec.instance_kind)
    if spec.dynamic_batching and spec.max_batch_size > 0:
        cfg.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    for key, value in spec.parameters.items():
        cfg.parameters[key].string_value = value
    return cfg


def render(msg: Any) -> str:
    """Print a `ModelConfig` message as config.pbtxt text."""
    from google.protobuf import text_format

    return text_format.MessageToString(msg)


def render_spec(spec: ModelSpec) -> str:
    """config.pbtxt text for `spec`."""
    return render(to_message(spec))


def parse(text: str, where: str = "config.pbtxt") -> Any:
    """Parse config.pbtxt text into a `ModelConfig`, as Triton would.

    Raises:
        InputError: the text does not parse (e.g. an unfilled `${var}` in a numeric field).
    """
    from google.protobuf import text_format

    pb = model_config_pb2()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as e:
        raise InputError(f"invalid Triton model config: {e}", where=where) from e


def parse_file(path: str | Path) -> Any:
    """Parse one config.pbtxt file (see `parse`)."""
    return parse(Path(path).read_text(), where=str(path))
