"""EngineConfig validation: every path to a config checks every value."""

from __future__ import annotations

import json

import pytest

from xl3m_stream.config import EngineConfig
from xl3m_stream.errors import ConfigError

BAD_VALUES = [
    {"segment_tokens": 0},
    {"segment_tokens": -5},
    {"segment_tokens": 10**9},
    {"segment_overlap": 256},
    {"segment_overlap": -1},
    {"devices": []},
    {"devices": ["gpu"]},
    {"devices": ["cpu", "cpu"]},
    {"dtype": "float8"},
    {"measure": "perplexity"},
    {"batch_size": 0},
    {"batch_wait_ms": -1.0},
    {"store_segments": 0},
    {"store_tokens": 0},
    {"context_tokens": 0},
    {"temperature": float("nan")},
    {"temperature": -0.5},
    {"trust_remote_code": 1},
    {"question": "   "},
    {"model": ""},
    {"reader_window": 32, "max_new_tokens": 64},
    {"rescore": "sometimes"},
    {"local_window_tokens": 10**19},
    {"seed": 2**64},
    {"store_tokens": 2**63},
    {"context_tokens": 10**30},
    {"backend": "spark"},
    {"backend": "ray", "workers": 0},
    {"backend": "ray", "workers": 257},
    {"backend": "ray", "ray_address": " "},
    {"workers": 2},  # a setting of backend="ray"
    {"ray_address": "127.0.0.1:6379"},
]


@pytest.mark.parametrize("values", BAD_VALUES, ids=lambda v: ",".join(v))
def test_bad_values_rejected_on_every_path(values: dict) -> None:
    with pytest.raises(ConfigError):
        EngineConfig(**values)
    with pytest.raises(ConfigError):
        EngineConfig.from_dict(values)
    with pytest.raises(ConfigError):
        EngineConfig().replace(**values)


def test_defaults_are_valid_and_round_trip() -> None:
    config = EngineConfig()
    again = EngineConfig.from_dict(config.to_dict())
    assert again == config
    assert config.replace(batch_size=4).batch_size == 4


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        EngineConfig.from_dict({"bogus": 1})


def test_from_file_toml_and_json(tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('segment_tokens = 128\nmeasure = "entropy"\ndevices = ["cpu"]\n')
    assert EngineConfig.from_file(toml).segment_tokens == 128
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"batch_size": 3}))
    assert EngineConfig.from_file(js).batch_size == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("segment_tokens = = 3")
    with pytest.raises(ConfigError, match="not valid"):
        EngineConfig.from_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        EngineConfig.from_file(tmp_path / "missing.toml")
    yaml = tmp_path / "c.yaml"
    yaml.write_text("x: 1")
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        EngineConfig.from_file(yaml)


def test_from_env_overrides() -> None:
    env = {"XL3M_STREAM_SEGMENT_TOKENS": "64", "XL3M_STREAM_MODEL": "/models/x", "XL3M_STREAM_DEVICES": '["cpu"]'}
    config = EngineConfig.from_env(EngineConfig(batch_size=2), environ=env)
    assert (config.segment_tokens, config.model, config.devices, config.batch_size) == (64, "/models/x", ["cpu"], 2)
    with pytest.raises(ConfigError):
        EngineConfig.from_env(environ={"XL3M_STREAM_BATCH_SIZE": "-3"})
    env = {"XL3M_STREAM_BACKEND": "ray", "XL3M_STREAM_WORKERS": "3", "XL3M_STREAM_RAY_ADDRESS": "ray://head:10001"}
    config = EngineConfig.from_env(environ=env)
    assert (config.backend, config.workers, config.ray_address) == ("ray", 3, "ray://head:10001")


def test_hostile_config_files_and_environment_values_are_config_errors(tmp_path) -> None:
    deep_json = tmp_path / "deep.json"
    deep_json.write_text('{"stop": ' + "[" * 100_000 + "]" * 100_000 + "}")
    deep_toml = tmp_path / "deep.toml"
    deep_toml.write_text("stop = " + "[" * 100_000 + "]" * 100_000 + "\n")
    digits = tmp_path / "digits.json"
    digits.write_text('{"seed": ' + "9" * 5000 + "}")
    for path in (deep_json, deep_toml, digits):
        with pytest.raises(ConfigError, match=str(path.name)):
            EngineConfig.from_file(path)
    for raw in ("9" * 5000, "[" * 100_000 + "]" * 100_000):
        with pytest.raises(ConfigError, match="XL3M_STREAM_SEED"):
            EngineConfig.from_env(environ={"XL3M_STREAM_SEED": raw})
