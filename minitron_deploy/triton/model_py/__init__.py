"""Model files that `package triton` copies into a model repository (as `<model>/1/model.py`)."""

from pathlib import Path

TORCH_MODEL_PY = Path(__file__).with_name("torch_model.py")
