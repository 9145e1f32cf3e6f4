from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import GatewayConfig, load_config, parse_config_text

YAML = """
slo_classes:
  fast: {ttft_ms: 500, tpot_ms: 30}
default_class: fast
models:
  - {name: m, default_class: fast}
backends:
  - {name: a, url: "http://127.0.0.1:9001/", max_in_flight: 8}
"""


def test_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(YAML)
    config = load_config(yaml_file)
    assert config.backends[0].base_url == "http://127.0.0.1:9001"
    assert config.backends[0].max_in_flight == 8
    json_file = tmp_path / "c.json"
    json_file.write_text(config.model_dump_json())
    assert load_config(json_file) == config


def test_empty_text_gives_defaults() -> None:
    config = parse_config_text("", suffix=".yaml")
    assert config.default_class in config.slo_classes
    assert config.backends == ()


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"default_class": "nope"}, "default_class 'nope'"),
        ({"models": [{"name": "m", "default_class": "nope"}]}, "unknown default_class"),
        (
            {"backends": [{"name": "a", "url": "http://x:1"}, {"name": "a", "url": "http://y:1"}]},
            "unique",
        ),
        ({"backends": [{"name": "a", "url": "not a url"}]}, "URL"),
        ({"backends": [{"name": "a", "url": "http://x:1", "max_in_flight": 0}]}, "greater"),
        ({"slo_classes": {"fast": {"ttft_ms": -1, "tpot_ms": 30}}}, "greater"),
    ],
)
def test_invalid_configs(patch: dict[str, object], fragment: str) -> None:
    raw: dict[str, object] = {
        "slo_classes": {"fast": {"ttft_ms": 500, "tpot_ms": 30}},
        "default_class": "fast",
    }
    raw.update(patch)
    with pytest.raises(ValidationError, match=fragment):
        GatewayConfig.model_validate(raw)


def test_frozen() -> None:
    config = parse_config_text(YAML, suffix=".yaml")
    with pytest.raises(ValidationError):
        config.backends[0].max_in_flight = 3


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "sluice.example.yaml"
    config = load_config(example)
    assert config.class_for_model("meta-llama/Llama-3.1-8B-Instruct") == "interactive"
    assert [b.name for b in config.backends] == ["vllm-0", "vllm-1"]


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([{"model": "m"}], "cannot be a variant of itself"),
        ([{"model": "v"}, {"model": "v"}], "more than once"),
    ],
)
def test_variants_are_checked(variants: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewayConfig.model_validate({"models": [{"name": "m", "variants": variants}]})


def test_the_degrade_band_must_be_a_band() -> None:
    with pytest.raises(ValidationError, match="leave_share"):
        GatewayConfig.model_validate(
            {"scheduler": {"degrade": {"enter_share": 0.01, "leave_share": 0.05}}}
        )
