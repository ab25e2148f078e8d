"""The typed config loader: defaults <- YAML section <- overrides, with errors that name the bad key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from wsi_pipeline.config import config_to_dict, load_config, merge_overrides, parse_set_overrides
from wsi_pipeline.errors import ConfigError


@dataclass
class _Inner:
    method: Literal["otsu", "fixed"] = "otsu"
    threshold: float = 20.0


@dataclass
class _Stage:
    size: int = 224
    mpp: float = 0.5
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    inner: _Inner = field(default_factory=_Inner)


def test_defaults_without_file_or_overrides() -> None:
    assert load_config(_Stage, "stage") == _Stage()


def test_yaml_section_then_overrides_win(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    # Another stage's section is that stage's business (it is checked when that stage reads the file).
    cfg_file.write_text("stage:\n  size: 256\n  inner:\n    method: fixed\ntile:\n  ignored: 1\n")
    cfg = load_config(_Stage, "stage", cfg_file, {"size": 512, "inner.threshold": 7, "name": None})
    assert cfg.size == 512  # CLI beats file
    assert cfg.inner.method == "fixed"  # file beats default
    assert cfg.inner.threshold == 7.0 and isinstance(cfg.inner.threshold, float)
    assert cfg.name is None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"sise": 3}, "unknown key 'sise' in stage; did you mean 'size'?"),
        ({"size": "big"}, "stage.size: expected an integer"),
        ({"inner.method": "magic"}, "stage.inner.method: 'magic' is not one of"),
        ({"tags": "a"}, "expected a list"),
    ],
)
def test_bad_values_name_the_key(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(_Stage, "stage", None, overrides)
    assert needle in str(info.value)


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(_Stage, "stage", bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(_Stage, "stage", tmp_path / "missing.yaml")


def test_set_overrides_parse_yaml_scalars() -> None:
    parsed = parse_set_overrides(["size=300", "inner.method=fixed", "tags=[a, b]", "name="])
    assert parsed == {"size": 300, "inner.method": "fixed", "tags": ["a", "b"], "name": None}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_overrides(["novalue"])
    assert merge_overrides({"a": 1, "b": None}, {"a": None, "c": 3}) == {"a": 1, "c": 3}


def test_config_round_trips_through_dict() -> None:
    cfg = _Stage(size=300, tags=["x"], inner=_Inner(method="fixed"))
    assert load_config(_Stage, "stage", None, {k: v for k, v in config_to_dict(cfg).items() if k != "inner"}) == (
        _Stage(size=300, tags=["x"])
    )
    assert config_to_dict(cfg)["inner"] == {"method": "fixed", "threshold": 20.0}


def test_exponent_floats_are_numbers_as_users_write_them(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML's default) reads 5e-4 as a string; `--set lr=5e-4` must be a number, in files too.
    parsed = parse_set_overrides(["mpp=5e-4", "inner.threshold=1E3", "name=5e-4x", "tags=[1e-3, .5e1]"])
    assert parsed == {"mpp": 5e-4, "inner.threshold": 1000.0, "name": "5e-4x", "tags": [1e-3, 5.0]}
    assert load_config(_Stage, "stage", None, parse_set_overrides(["mpp=5e-4"])).mpp == 5e-4
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("stage:\n  mpp: 2.5e-1\n  name: '1e5'\n  inner:\n    threshold: -2e+1\n")
    cfg = load_config(_Stage, "stage", cfg_file)
    assert (cfg.mpp, cfg.name, cfg.inner.threshold) == (0.25, "1e5", -20.0)
