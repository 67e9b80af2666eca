"""One configuration mechanism for every concern (engine, labelers, trainer, service).

A configuration is a dataclass whose fields carry a one-line meaning (`setting(..., help=...)`).
`load` reads it from, in increasing precedence: the dataclass defaults, a YAML mapping (or one
section of it), environment variables (`<PREFIX><FIELD>`, e.g. SESAM_BACKEND), and `--set
key=value` overrides (dotted keys reach nested mappings: `engine.backend=torch`). Every value goes
through the same coercion, and every error names the source, the setting and the value.
`settings_markdown` turns the registered configurations into the settings table in docs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def setting(default: Any = dataclasses.MISSING, *, help: str, env: bool = True, **kwargs: Any) -> Any:
    """A dataclass field with its meaning (for the docs) and whether the environment may set it."""
    if isinstance(default, (dict, list)):
        kwargs["default_factory"] = lambda value=default: json.loads(json.dumps(value))
        default = dataclasses.MISSING
    return dataclasses.field(default=default, metadata={"help": help, "env": env}, **kwargs)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True
    return annotation, False


def strip_optional(annotation: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (it, False)."""
    return _strip_optional(annotation)


def coerce(raw: Any, annotation: Any, name: str, source: str) -> Any:
    """`raw` (from YAML, the environment or --set) as the field's type; ValueError names all three."""
    kind, optional = _strip_optional(annotation)
    if raw is None or (optional and isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise ValueError(f"{source}: {name} must be set (a {getattr(kind, '__name__', kind)})")
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if optional and text == "auto":
                return None
            if text not in TRUE + FALSE:
                raise ValueError
            return text in TRUE
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind is str:
            if isinstance(raw, (list, tuple)):  # YAML lists for comma-separated settings
                return ",".join(str(v) for v in raw)
            if isinstance(raw, (dict, bool)):
                raise ValueError
            return str(raw)
        origin = typing.get_origin(kind)
        if origin is tuple:
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            (item_type, *_) = typing.get_args(kind)
            return tuple(coerce(v, item_type, name, source) for v in items)
        if origin is dict or kind is dict:
            value = yaml.safe_load(raw) if isinstance(raw, str) else raw
            if not isinstance(value, Mapping):
                raise ValueError
            return dict(value)
        if dataclasses.is_dataclass(kind):
            return raw if isinstance(raw, kind) else from_mapping(kind, raw, f"{source}: {name}")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(source):
            raise
        type_name = getattr(kind, "__name__", str(kind))
        raise ValueError(f"{source}: {name} = {raw!r} is not a valid {type_name}") from exc
    return raw


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, source: str = "config") -> T:
    """An instance of `cls` from a mapping: unknown keys are refused (the known ones are listed, and
    a key the class lists in `MOVED_SETTINGS` says where it went), values coerced, then
    `validate(source)` runs when the class has one."""
    if values is not None and not isinstance(values, Mapping):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    values = dict(values or {})
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    for key in unknown:
        hint = getattr(cls, "MOVED_SETTINGS", {}).get(key)
        if hint:
            raise ValueError(f"{source}: {key} {hint}")
    if unknown:
        raise ValueError(f"{source}: unknown settings {unknown}; known: {sorted(types_)}")
    out = cls(**{k: coerce(v, types_[k], k, source) for k, v in values.items()})
    validate = getattr(out, "validate", None)
    if callable(validate):
        validate(source)
    return out


def env_values(cls: type, prefix: str, env: Mapping[str, str] | None = None) -> dict:
    """Raw values of the environment variables `<prefix><FIELD>` that are set and not empty."""
    env = os.environ if env is None else env
    out = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name.upper()
        if f.metadata.get("env", True) and env.get(name, "") != "":
            out[f.name] = env[name]
    return out


def read_yaml(path: str | Path, sections: Sequence[str] = ()) -> dict[str, Any]:
    """A YAML mapping; with `sections`, only those top-level keys are allowed."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the config ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    if sections and set(data) - set(sections):
        raise ValueError(
            f"{path}: unknown sections {sorted(set(data) - set(sections))}; expected {list(sections)}"
        )
    return data


def bounded(
    kind: typing.Callable[[str], Any], low: float | None = None, high: float | None = None
) -> typing.Callable[[str], Any]:
    """An argparse `type` for a number flag: `kind(text)` within [low, high] (either end open when
    None); otherwise argparse names the flag and says why (one line, exit 2)."""
    name = getattr(kind, "__name__", "number")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
            if low is None:
                raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
            raise argparse.ArgumentTypeError(f"must lie in [{low:g}, {high:g}], got {text}")
        return value

    parse.__name__ = name  # argparse's "invalid <name> value" names the kind
    return parse


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` items -> a nested mapping (dotted keys); values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value")
        *parents, last = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part} is not a mapping")
        node[last] = yaml.safe_load(raw)
    return out


def merge(base: dict[str, Any], extra: Mapping[str, Any], nested: Sequence[str] = ()) -> dict[str, Any]:
    """`base` updated by `extra`; keys in `nested` (mappings) are merged one level deep."""
    out = dict(base)
    for key, value in extra.items():
        if key in nested and isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load(
    cls: type[T],
    *,
    yaml_values: Mapping[str, Any] | None = None,
    prefix: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Sequence[str] = (),
    source: str = "config",
) -> T:
    """Defaults < YAML values < environment (`prefix`) < --set overrides, through `from_mapping`."""
    values = dict(yaml_values or {})
    nested = [
        n
        for n, t in field_types(cls).items()
        if _strip_optional(t)[0] is dict or typing.get_origin(t) is dict
    ]
    if prefix is not None:
        from_env = env_values(cls, prefix, env)
        if from_env:
            source = f"{source} + environment" if yaml_values else "environment"
        values = merge(values, from_env)
    if overrides:
        values = merge(values, parse_overrides(overrides), nested)
        source += " + --set"
    return from_mapping(cls, values, source)


def settings_rows(cls: type, prefix: str | None, root: Path | None = None) -> list[tuple[str, str, str, str]]:
    """(setting, environment variable, default, meaning) for every field of `cls`; defaults that are
    paths under `root` are shown relative to it (the page must not depend on the checkout's place)."""
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        if dataclasses.is_dataclass(default):
            default = "(its own section)"
        env = f"`{prefix}{f.name.upper()}`" if prefix is not None and f.metadata.get("env", True) else "-"
        shown = _shown(default)
        if root is not None:
            shown = shown.replace(str(root) + "/", "")
        rows.append((f"`{f.name}`", env, f"`{shown}`", f.metadata.get("help", "")))
    return rows


def _shown(default: Any) -> str:
    """A default as the docs show it: none, JSON for containers and booleans, else str."""
    if default is None:
        return "none"
    if isinstance(default, (tuple, list, dict, bool)):
        return json.dumps(list(default) if isinstance(default, tuple) else default)
    return str(default)


def settings_markdown(sections: Sequence[tuple[str, str, type, str | None]], root: Path | None = None) -> str:
    """The settings table of each (title, where it is read, config class, env prefix)."""
    parts = [
        "# Settings",
        "",
        "Generated from the code by `sesam settings` (a test keeps this page equal to it). Every",
        "configuration is read the same way (`models/config.py`): defaults < YAML < environment <",
        "`--set key=value`; every value is coerced and checked, and an error names the source, the",
        "setting and the value.",
    ]
    for title, where, cls, prefix in sections:
        parts += [
            "",
            f"## {title}",
            "",
            where,
            "",
            "| setting | environment | default | meaning |",
            "|---|---|---|---|",
        ]
        parts += ["| " + " | ".join(row) + " |" for row in settings_rows(cls, prefix, root)]
    return "\n".join(parts) + "\n"


# -- registries -------------------------------------------------------------------------------------
# One shape for every "by name" choice (engines, labelers, students, recipes, samplers, ...): a plain
# dict from name to builder, filled where the builders are defined (literally, or with `register`),
# and read through `lookup`, so every unknown name gets the same error.


def register(registry: dict[str, T], name: str) -> typing.Callable[[T], T]:
    """Decorator: put the decorated builder into `registry` under `name` (each name once)."""

    def add(builder: T) -> T:
        if name in registry:
            raise ValueError(f"{name!r} is registered twice")
        registry[name] = builder
        return builder

    return add


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """`registry[name]`, or a ValueError: "unknown <what> '<name>'; choose one of [...]"."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}") from None
