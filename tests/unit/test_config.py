import dataclasses
import typing

import pytest
import yaml

from ebbtide.config import Config, ConfigError, default_conf_dir, load_config


def test_defaults_load_and_types():
    cfg = load_config(env="local")
    assert cfg.sessionize.gap_minutes == 30.0
    assert isinstance(cfg.sequences.max_len, int)
    assert cfg.env == "local"


def test_overrides_are_typed_and_applied_last(tmp_path):
    extra = tmp_path / "x.yaml"
    extra.write_text("sessionize:\n  gap_minutes: 10\n")
    cfg = load_config(env="local", files=[extra], overrides=["sessionize.gap_minutes=45", "spark.conf.spark.foo=bar"])
    assert cfg.sessionize.gap_minutes == 45.0
    assert cfg.spark.conf == {"spark.foo": "bar"}


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'sessionize.gap_minute'"):
        load_config(env="local", overrides=["sessionize.gap_minute=3"])


def test_ill_typed_value_names_key_and_type():
    with pytest.raises(ConfigError, match=r"'sequences.max_len' must be int"):
        load_config(env="local", overrides=["sequences.max_len=long"])
    with pytest.raises(ConfigError, match=r"'ingest.source.format' must be one of"):
        load_config(env="local", overrides=["ingest.source.format=xml"])


@pytest.mark.parametrize("raw,expected", [
    ("::", "::"), ("|", "|"), (" ", " "), (";", ";"), ("\\t", "\\t"), ("a: b", "a: b"), ("yes", "yes"),
    ("'  '", "  "), ('"\\t"', "\t"),
])
def test_a_text_key_keeps_the_value_as_typed(raw, expected):
    # YAML would read '::' as a mapping, '|' as a block scalar, ' ' as nothing and 'yes' as a bool.
    cfg = load_config(env="local", overrides=[f"ingest.source.csv_delimiter={raw}"])
    assert cfg.ingest.source.csv_delimiter == expected


def test_typed_keys_still_parse_as_yaml():
    cfg = load_config(env="local", overrides=["spark.conf.spark.sql.ansi.enabled=true", "sequences.max_len=7",
                                              "ingest.source.null_values=[NA, '-']", "sequences.split.valid_start=2025-01-01"])
    assert cfg.spark.conf == {"spark.sql.ansi.enabled": "true"}
    assert cfg.sequences.max_len == 7 and cfg.ingest.source.null_values == ("NA", "-")
    assert cfg.sequences.split.valid_start == "2025-01-01"


def test_missing_overlay_is_an_error():
    with pytest.raises(ConfigError, match="no overlay"):
        load_config(env="nowhere")


@pytest.mark.parametrize("env", ["local", "databricks", "emr"])
def test_every_overlay_validates(env):
    assert load_config(env=env).env == env


def _keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from _keys(tp, key + ".")
        else:
            yield key


def test_base_yaml_documents_every_key():

    base = yaml.safe_load((default_conf_dir() / "base.yaml").read_text())
    cfg = load_config(env="local")
    sections = [(Config, "")] + [(type(v), k + ".") for k, v in cfg.extra.items()]
    for cls, prefix in sections:
        for key in _keys(cls, prefix):
            node = base
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{key} missing from conf/base.yaml"
                node = node[part]


@pytest.mark.parametrize("profile", sorted((default_conf_dir() / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_validates_as_a_conf_file(profile):
    """A profile is a --conf overlay: it validates against every overlay and changes train keys only."""
    data = yaml.safe_load(profile.read_text())
    assert set(data) == {"train"}
    for env in ("local", "databricks", "emr"):
        cfg = load_config(env=env, files=[profile])
        for key, value in data["train"].items():
            assert getattr(cfg.section("train"), key) == value


def test_quick_profile_is_a_time_budget():
    cfg = load_config(env="local", files=[default_conf_dir() / "profiles" / "quick.yaml"])
    tc = cfg.section("train")
    assert tc.max_seconds > 0 and tc.epoch_share < 1


def test_a_profile_is_named_or_given_as_a_file(tmp_path):
    by_name = load_config(env="local", files=["quick"])
    by_path = load_config(env="local", files=[default_conf_dir() / "profiles" / "quick.yaml"])
    assert by_name.section("train").lr == by_path.section("train").lr
    with pytest.raises(ConfigError, match="no profile 'nope'.*profiles: .*quick"):
        load_config(env="local", files=["nope"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env="local", files=[tmp_path / "missing.yaml"])
