"""Profiles: the YAML schema (`schema.py`), loading with overrides and defaults (`load.py`) and
cross-field checks (`checks.py`). Importing it does not import torch."""

from minitron_deploy.profile.load import ProfileErrors, apply_overrides, load_profile
from minitron_deploy.profile.schema import Profile, write_schema

__all__ = ["Profile", "ProfileErrors", "apply_overrides", "load_profile", "write_schema"]
