"""Every export default is declared once (`ExportOptions`); the section and one format's
settings derive from it, and what the pipeline serves is read from the format records."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from minitron_deploy.export.config import ExportConfig
from minitron_deploy.export.format import ExportOptions, ExportSettings
from minitron_deploy.export.registry import FORMATS


def test_section_and_settings_take_their_defaults_from_one_model():
    defaults = ExportOptions()
    section = ExportConfig()
    bare = ExportSettings(dtype="fp8")
    for name in ExportOptions.model_fields:
        assert getattr(section, name) == getattr(defaults, name), name
        assert bare.get(name) == getattr(defaults, name), name
    # the bounds travel with the defaults
    for bad in ({"calib_samples": 0}, {"calib_seq_len": 1}, {"tp_size": 0}):
        for model in (ExportOptions, ExportConfig, ExportSettings):
            with pytest.raises(ValidationError):
                model(**bad)


def test_a_format_reads_only_its_fields_and_the_rest_stay_unset():
    section = ExportConfig(calib_samples=7, tp_size=2)
    hf = section.settings("hf")
    assert hf.calib_samples is None and hf.tp_size is None  # enter no cache key
    fp8 = section.settings("hf-fp8")
    assert fp8.get("calib_samples") == 7 and fp8.tp_size is None
    assert section.settings("trtllm-ckpt").get("tp_size") == 2


def test_the_served_export_is_named_by_the_records():
    served = [f for f, spec in FORMATS.items() if spec.hf_model]
    assert set(served) == {"hf", "hf-fp8"}
    assert max(served, key=lambda f: FORMATS[f].serve_rank) == "hf-fp8"
