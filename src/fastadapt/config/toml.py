"""Configs as TOML: the shipped presets (``fastadapt/config/presets``), files, ``section.key=value`` overrides,
and :func:`to_toml`, a config written back as a commented file to edit."""

from __future__ import annotations

import inspect
import math
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from fastadapt.config.schema import SECTIONS, Config, field_comments
from fastadapt.config.schema import short_repr as _short
from fastadapt.config.validate import algorithm_signature, config_from_dict
from fastadapt.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"data.ways=20"`` -> (["data", "ways"], 20); the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value; write e.g. data.ways=20")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) != 2 or not all(path):
        raise ConfigError(f"override key {key!r} must be section.key, e.g. data.ways or algorithm.inner_lr")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return path, parsed


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".toml")]
        for p in resources.files("fastadapt.config.presets").iterdir()
        if p.name.endswith(".toml")
    )


def _read_file(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found; pass a preset name ({', '.join(preset_names())}) or a TOML file"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); check its permissions") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"save it as UTF-8, as TOML requires"
        ) from None


def read_toml(preset_or_path: str) -> dict[str, Any]:
    """The raw dict of a shipped preset (by name) or a TOML file (by path)."""
    if "\x00" in preset_or_path:
        raise ConfigError(f"config {_short(preset_or_path)} holds a NUL character; pass a preset name or a TOML file")
    path = Path(preset_or_path)
    try:
        is_file = path.suffix == ".toml" or path.exists()
    except OSError as e:  # a name too long for the file system, ...
        raise ConfigError(
            f"config {_short(preset_or_path)}: {e.strerror or e}; pass a preset name or a TOML file"
        ) from None
    if is_file:
        text = _read_file(path)
    elif preset_or_path in preset_names():
        text = (resources.files("fastadapt.config.presets") / f"{preset_or_path}.toml").read_text(encoding="utf-8")
    else:
        raise ConfigError(
            f"unknown preset {preset_or_path!r}; choose one of {', '.join(preset_names())} or pass a .toml file"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{preset_or_path}: invalid TOML ({e})") from None


# An override of one of these keys replaces the other: model.target=... on a preset that names conv4.
_EXCLUSIVE = {
    ("model", "name"): "target",
    ("model", "target"): "name",
    ("data", "dataset"): "target",
    ("data", "target"): "dataset",
    ("algorithm", "name"): "target",
    ("algorithm", "target"): "name",
}


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``raw`` with ``section.key=value`` overrides applied (in place; returned)."""
    for text in overrides:
        (section, key), value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"[{section}] is not a table")
        other = _EXCLUSIVE.get((section, key))
        if other is not None:
            raw[section].pop(other, None)
        raw[section][key] = value
    return raw


def load_config(preset_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a preset or file, apply ``key=value`` overrides, validate."""
    return config_from_dict(apply_overrides(read_toml(preset_or_path), overrides))


def catalogue() -> str:
    """What a config can name, as ``fastadapt list`` prints it: algorithms, models, task sources, parts, presets."""
    from fastadapt.core.registry import ALGORITHMS, MODELS, TASK_SOURCES
    from fastadapt.data import SPLITS

    lines = []
    for title, registry in (
        ("algorithms", ALGORITHMS),
        ("models", MODELS),
        ("task sources (data.dataset)", TASK_SOURCES),
    ):
        have = set(registry.available())
        lines.append(f"{title}:")
        for name in registry.names():
            flag = "" if name in have else "  (not in this version)"
            lines.append(f"  {name:<10} {registry.entry(name).description}{flag}")
    lines.append("omniglot parts:")
    lines += [f"  split={split}: {', '.join(parts)}" for split, parts in SPLITS.items()]
    lines.append("presets:")
    lines += [f"  {name}" for name in preset_names()]
    return "\n".join(lines) + "\n"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    chars = (escapes.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in text)
    return '"' + "".join(chars) + '"'


def toml_value(v: Any) -> str | None:
    """``v`` as a TOML value; None when TOML cannot write it (``None``, an object)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        items = [toml_value(x) for x in v]
        return None if None in items else "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    if isinstance(v, dict):
        pairs = [(k if _BARE_KEY.fullmatch(str(k)) else _toml_string(str(k)), toml_value(x)) for k, x in v.items()]
        if any(x is None for _, x in pairs):
            return None
        return "{ " + ", ".join(f"{k} = {x}" for k, x in pairs) + " }" if pairs else "{}"
    return None


def _toml_line(key: str, value: Any, comment: str) -> str:
    text = toml_value(value)
    if text is None:  # kept visible, as a comment: TOML has no None
        return f"# {key} = {value!r}  (not expressible in TOML)" + (f"  # {comment}" if comment else "")
    return f"{key} = {text}" + (f"  # {comment}" if comment else "")


def to_toml(cfg: Config, title: str = "") -> str:
    """``cfg`` as a TOML file to save, edit and load again: every key of every section with its value and its comment.

    ``[algorithm]`` holds the options the config sets; the algorithm's other constructor options follow as
    comments with their defaults. ``load_config`` of the text gives ``cfg`` back (``to_dict()`` equal).
    """
    data = cfg.to_dict()
    lines = [f"# {line}" for line in title.splitlines()]
    for name, cls in SECTIONS.items():
        comments = field_comments(cls)
        lines += ["", f"[{name}]", *(_toml_line(k, v, comments.get(k, "")) for k, v in data[name].items())]
    algo = dict(data["algorithm"])
    key = "target" if "target" in algo else "name"
    lines += ["", "[algorithm]", _toml_line(key, algo.pop(key), field_comments(Config).get("algorithm", ""))]
    lines += [_toml_line(k, v, f"an option of {cfg.algorithm}") for k, v in algo.items()]
    try:
        params = algorithm_signature(cfg.algorithm)
    except ConfigError:
        params = {}
    rest = [p for p in params.values() if p.name not in algo]
    if rest:
        lines.append(f"# other options of {cfg.algorithm}, at their defaults (uncomment to change):")
    for p in rest:
        text = None if p.default is inspect.Parameter.empty else toml_value(p.default)
        lines.append(f"# {p.name} = {text}" if text is not None else f"# {p.name}: default {p.default!r}")
    return "\n".join(lines).lstrip("\n") + "\n"
