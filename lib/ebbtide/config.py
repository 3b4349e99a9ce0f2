"""Layered configuration: defaults, then an environment overlay, then command-line overrides.

``conf/base.yaml`` holds every key with its default; ``conf/<env>.yaml`` overrides some of
them; ``--conf FILE`` adds more overlays and ``--set a.b=value`` the last word. The merged
mapping is validated into the typed dataclasses below at start-up, so an unknown key or a
value of the wrong type fails before any Spark work, with the key's dotted path and the
type it expects in the message.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


# --------------------------------------------------------------------------------------
# Typed sections. Every field here must also appear in conf/base.yaml (a test checks it).
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparkConf:
    master: str = "local[*]"
    app_name: str = "ebbtide"
    # Take the session the platform made (Databricks, EMR) instead of building one.
    use_platform_session: bool = False
    # Local runs put the cached Delta jars on spark.jars; clusters bring their own Delta.
    add_delta_jars: bool = True
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StorageConf:
    # Everything the embedded default writes lives under root: warehouse, checkpoints, MLflow.
    root: str = ".ebbtide"
    warehouse_dir: str = "{root}/warehouse"
    checkpoint_dir: str = "{root}/checkpoints"
    database: str = "ebbtide"


# What real logs write for "no value" (R, pandas, MySQL dumps, SQL NULL spelled out).
DEFAULT_NULL_VALUES = ("NA", "N/A", "null", "NULL", "\\N", "None", "nan")


@dataclass(frozen=True)
class SourceConf:
    path: str = ""
    # csv | json (JSON lines) | parquet
    format: Literal["csv", "json", "parquet"] = "csv"
    # generic uses `columns`; the others know their layout.
    adapter: Literal["generic", "movielens", "movielens_100k", "recbole_inter", "taobao"] = "generic"
    # contract column -> source column, e.g. {user_id: visitorid, item_id: itemid, ts: timestamp}
    columns: dict[str, str] = field(default_factory=dict)
    # s | ms | us | ns | iso | auto (epoch numbers: seconds below 1e11, ms below 1e14, us below 1e17, else ns)
    ts_unit: Literal["auto", "s", "ms", "us", "ns", "iso"] = "auto"
    # false: the files have no header line and columns are named _c0, _c1, ... by position.
    csv_header: bool = True
    # One or more characters, e.g. ",", ";", "::", "|", " "; the escape \t is a tab (see ingest).
    csv_delimiter: str = ","
    # Field texts read as missing (after trimming; empty and whitespace-only always are).
    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES
    event_type_default: str = "interaction"
    # Text encoding of CSV / JSON files: utf-8 (a line that is not valid UTF-8 is quarantined),
    # latin-1 (ISO-8859-1) or ascii.
    encoding: Literal["utf-8", "latin-1", "ascii"] = "utf-8"
    # Glob of files under path to read; new files matching it are picked up incrementally.
    file_glob: str = "*"


@dataclass(frozen=True)
class IngestConf:
    source: SourceConf = field(default_factory=SourceConf)
    # Timestamps outside [min_ts, now + max_future_days] are quarantined as out of range.
    min_ts: str = "1990-01-01T00:00:00Z"
    max_future_days: int = 1
    max_files_per_trigger: int = 1000


@dataclass(frozen=True)
class SessionizeConf:
    gap_minutes: float = 30.0
    # Re-sessionize only users with new events since the last run (late events included).
    incremental: bool = True


@dataclass(frozen=True)
class SplitConf:
    # Global temporal cut-offs T1 (validation start) and T2 (test start), ISO-8601 UTC.
    # Empty: derived from quantiles of event time so that the last fractions fall after them.
    valid_start: str = ""
    test_start: str = ""
    valid_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass(frozen=True)
class SequencesConf:
    max_len: int = 50
    min_item_count: int = 1
    # Examples per user are the last N targets in each split (0 = every event).
    max_examples_per_user: int = 0
    split: SplitConf = field(default_factory=SplitConf)


@dataclass(frozen=True)
class SynthConf:
    users: int = 1000
    items: int = 500
    categories: int = 20
    events_per_user: float = 50.0
    days: int = 180
    start: str = "2025-01-01T00:00:00Z"
    seed: int = 7
    format: Literal["csv", "json", "parquet"] = "parquet"
    files: int = 4
    # Planted story (see ebbtide.synth): per-user interest half-life, log-uniform in [min, max].
    half_life_min_days: float = 0.5
    half_life_max_days: float = 60.0
    session_events_mean: float = 4.0
    intra_gap_median_s: float = 40.0
    # interest_c(t) = prior_c + interest_boost * 2^(-(t - t_last_c) / h); priors ~ Dirichlet.
    interest_boost: float = 2.0
    category_concentration: float = 0.5
    zipf_exponent: float = 1.0
    # Probability that a new item is the successor of the user's last item in its category.
    successor_prob: float = 0.5
    # Users arrive uniformly in the first arrival_fraction of the window.
    arrival_fraction: float = 0.75
    # Truth label: churned = no event in the window's last churn_days days.
    churn_days: int = 30
    # Fraction of deliberately broken rows (for the ingest quarantine); 0 = none.
    bad_rows: float = 0.0


@dataclass(frozen=True)
class Config:
    env: str = "local"
    log_level: str = "INFO"
    spark: SparkConf = field(default_factory=SparkConf)
    storage: StorageConf = field(default_factory=StorageConf)
    ingest: IngestConf = field(default_factory=IngestConf)
    sessionize: SessionizeConf = field(default_factory=SessionizeConf)
    sequences: SequencesConf = field(default_factory=SequencesConf)
    synth: SynthConf = field(default_factory=SynthConf)
    # Sections whose dataclasses live with their stage register here (see register_section).
    extra: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        """A registered stage section (model, train, mlflow, evaluate, score...)."""
        try:
            return self.extra[name]
        except KeyError:
            raise ConfigError(f"no config section {name!r}; known: {sorted(self.extra)}") from None

    def path(self, template: str) -> str:
        """Resolve a storage template such as '{root}/warehouse'; URIs (s3://, dbfs:/) pass through."""
        root = self.storage.root
        if not _is_uri(root):
            root = str(Path(os.path.expanduser(root)).resolve())
        resolved = template.format(root=root)
        return resolved if _is_uri(resolved) else str(Path(os.path.expanduser(resolved)).resolve())

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        return d


def parse_utc(value: Any, key: str = "value"):
    """An ISO-8601 time from config or a table property as an aware UTC datetime; a naive one is
    taken as UTC. The error names the key and an example of the expected form."""
    from datetime import datetime, timezone

    if isinstance(value, datetime):
        d = value
    else:
        try:
            d = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{key} must be an ISO-8601 time such as 2025-01-01T00:00:00Z, got {value!r}") from None
    return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)


def _is_uri(s: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", s))


# Stage modules add their own sections (e.g. "model", "train") without config.py knowing them.
_SECTIONS: dict[str, type] = {}


def register_section(name: str):
    def deco(cls):
        _SECTIONS[name] = cls
        return cls
    return deco


# Modules that define a stage's section; importing one registers it. They must stay light
# (no torch, no pyspark at import time) so that config loading is instant.
STAGE_CONFIG_MODULES = (
    "ebbtide.model.config", "ebbtide.evaluation.config", "ebbtide.scoring.config", "ebbtide.monitor.config",
)


def _load_registered_sections() -> None:
    import importlib
    import importlib.util

    for mod in STAGE_CONFIG_MODULES:
        try:
            spec = importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            importlib.import_module(mod)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return {_coerce(k, kt, f"{key}.{k}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        (et, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        items = [_coerce(v, et, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' must be float, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be str, got {value!r}")
    raise ConfigError(f"config key '{key}' has an unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            if cls is Config and k in _SECTIONS:
                continue
            known = sorted(names | (set(_SECTIONS) if cls is Config else set()))
            raise ConfigError(f"unknown config key '{key}'; known keys here: {', '.join(known)}")
        kwargs[k] = _coerce(v, hints[k], key)
    if cls is Config:
        kwargs["extra"] = {name: _build(sec, data.get(name) or {}, name) for name, sec in _SECTIONS.items()}
    return cls(**kwargs)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def default_conf_dir() -> Path:
    env = os.environ.get("EBBTIDE_CONF_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "conf", here.parent / "conf"):
        if (cand / "base.yaml").exists():
            return cand
    raise ConfigError("conf/base.yaml not found; set EBBTIDE_CONF_DIR to the folder holding it")


def conf_file(name: str | Path, conf_dir: Optional[Path] = None) -> Path:
    """A --conf argument as a file: a path, or the name of a profile in conf/profiles (``quick``
    is conf/profiles/quick.yaml), so that an installed wheel's profiles can be named too."""
    path = Path(name)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    profiles = Path(conf_dir or default_conf_dir()) / "profiles"
    if (profiles / f"{name}.yaml").exists():
        return profiles / f"{name}.yaml"
    known = ", ".join(sorted(p.stem for p in profiles.glob("*.yaml"))) or "none"
    raise ConfigError(f"--conf {name}: no such file, and no profile {name!r} in {profiles} (profiles: {known})")


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=3' -> (['a', 'b'], 3); the value is parsed as YAML so types come out right (for keys
    that hold text, :func:`load_config` keeps the raw text instead, see :func:`_override_value`)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _key_type(path: list[str]) -> Any:
    """The declared type of a dotted key (a map's value type for keys inside a map), or None."""
    tp: Any = Config
    for part in path:
        if tp is Config and part in _SECTIONS:
            tp = _SECTIONS[part]
        elif dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
        if tp is None:
            return None
    return tp


def _override_value(path: list[str], raw: str, parsed: Any) -> Any:
    """For a key typed ``str`` the text after '=' is the value as typed: YAML would read
    ``::`` or ``a: b`` as a mapping, ``|`` as a block, ``' '`` as nothing and ``yes`` as a bool.
    A value in matching quotes is still unquoted by YAML, for a leading or trailing space."""
    if _key_type(path) is not str:
        return parsed
    t = raw.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"" and isinstance(parsed, str):
        return parsed
    return raw


def _fold_map_keys(path: list[str]) -> list[str]:
    """Keys of a map field may hold dots (spark.conf.spark.sql.x): fold the rest into one key."""
    cls: Any = Config
    for i, part in enumerate(path[:-1]):
        tp = _SECTIONS.get(part) if cls is Config and part in _SECTIONS else None
        if tp is None:
            hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
            tp = hints.get(part)
        if typing.get_origin(tp) is dict:
            return path[: i + 1] + [".".join(path[i + 1 :])]
        if not dataclasses.is_dataclass(tp):
            return path
        cls = tp
    return path


def load_config(
    env: Optional[str] = None,
    files: Optional[list[str | Path]] = None,
    overrides: Optional[list[str]] = None,
    conf_dir: Optional[Path] = None,
) -> Config:
    _load_registered_sections()
    conf_dir = Path(conf_dir) if conf_dir else default_conf_dir()
    data = _read_yaml(conf_dir / "base.yaml")
    env = env or os.environ.get("EBBTIDE_ENV") or data.get("env") or "local"
    overlay = conf_dir / f"{env}.yaml"
    if overlay.exists():
        data = _deep_merge(data, _read_yaml(overlay))
    elif env != "local":
        raise ConfigError(f"no overlay {overlay} for environment {env!r}")
    data["env"] = env
    for f in files or []:
        data = _deep_merge(data, _read_yaml(conf_file(f, conf_dir)))
    for item in overrides or []:
        path, value = parse_override(item)
        path = _fold_map_keys(path)
        value = _override_value(path, item.split("=", 1)[1], value)
        patch: dict = {}
        cur = patch
        for p in path[:-1]:
            cur = cur.setdefault(p, {})
        cur[path[-1]] = value
        data = _deep_merge(data, patch)
    return _build(Config, data)
