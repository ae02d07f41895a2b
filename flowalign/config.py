"""Typed dataclass configs from YAML files and dotted command-line overrides.

``load_config(TrainConfig, "configs/toy_grpo_guard.yaml", ["optim.lr=3e-4", "sampling.group_size=4"])``
reads the YAML, applies the overrides (values parsed as YAML: numbers, booleans, lists), and builds the nested
dataclasses, checking every value's type. Unknown keys are rejected with the closest valid key suggested.
A field typed with a dataclass that has ``variants: ClassVar[dict[str, type]]`` is a tagged union: its
``name`` key picks the subclass (e.g. ``algorithm.name: grpo_guard``); ``register_variant`` fills the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from flowalign.errors import ConfigError
from flowalign.resources import resolve
from flowalign.utils.io import write_text

T = TypeVar("T")
C = TypeVar("C", bound=type)


def register_variant(base: type, name: str) -> Callable[[C], C]:
    """Class decorator: register a dataclass subclass of ``base`` as the variant chosen by ``name``."""
    registry = base.__dict__.get("variants")
    if not isinstance(registry, dict):
        raise TypeError(f"{base.__name__} has no 'variants: ClassVar[dict[str, type]]' registry of its own")

    def decorate(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"{cls!r} is not a subclass of {base.__name__}")
        if registry.get(name, cls) is not cls:
            raise TypeError(f"variant {name!r} of {base.__name__} is already {registry[name].__name__}")
        registry[name] = cls
        return cls

    return decorate


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = (), *,
                data: Mapping | None = None) -> T:
    """YAML file (optional) ← ``data`` (optional) ← dotted overrides → a ``cls`` instance.

    Later layers are merged into earlier ones section by section; a mapping given for a free-form mapping
    field (``reward.weights``) replaces it, while a dotted key into one (``reward.weights.pickscore=1``) sets
    that entry only."""
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings, got the string {overrides!r}")
    layers = _read_yaml(Path(resolve(path))) if path is not None else []  # shipped recipes from anywhere
    if data:
        layers.append(dict(data))
    stated: dict = {}  # all overrides first, so that their order never matters (e.g. a variant switch)
    for item in overrides:
        key, value = parse_override(item)
        stated = _deep_merge(stated, _nest(key.split("."), value))
    try:
        merged: dict = {}
        for layer in [*layers, stated]:
            merged = _merge_section(cls, merged, layer)
        return from_dict(cls, merged)
    except ConfigError as err:
        if path is None:
            raise
        sources = f"{path}" + (" and its base" if len(layers) > 1 else "")
        sources += " with the overrides" if overrides else ""
        raise ConfigError(f"{err} (in {sources})") from err


def _read_yaml(file: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
    """The layers of a YAML recipe, base first: a top-level ``base: other.yaml`` (relative to this file) is
    read before the file itself, so a recipe states only what it changes."""
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist")
    try:
        loaded = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(file)!r} is not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(file)!r} must hold a mapping at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return [loaded]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file {str(file)!r}: 'base' must be the path of another YAML file, got {base!r}")
    parent = (file.parent / base).resolve()
    if not parent.is_file():
        raise ConfigError(f"config file {str(file)!r}: its base {base!r} ({parent}) does not exist")
    if parent in seen or parent == file.resolve():
        raise ConfigError(f"config file {str(file)!r}: 'base: {base}' makes a cycle")
    return [*_read_yaml(parent, seen + (file.resolve(),)), loaded]


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` → ``("optim.lr", 3e-4)``; the value is read as YAML, an empty value is ``""``."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
    return ".".join(part.strip() for part in key.split(".")), value


class _DottedPath(dict):
    """The nesting built from a dotted override key: its entries are set one by one, never replacing."""


def _nest(parts: list[str], value: Any) -> dict:
    return _DottedPath({parts[0]: _nest(parts[1:], value) if len(parts) > 1 else value})


def _same_variant(old: Mapping, new: Mapping) -> bool:
    return "name" not in old or "name" not in new or old["name"] == new["name"]


def _deep_merge(base: dict, update: Mapping) -> dict:
    """``update`` over ``base``, recursively, without a schema (the overrides among themselves)."""
    dotted = isinstance(update, _DottedPath) and isinstance(base, _DottedPath)
    out = _DottedPath(base) if dotted else dict(base)  # a plain mapping on either side makes the result one
    for key, value in update.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping) and _same_variant(old, value):
            out[key] = _deep_merge(old, value)
        else:
            out[key] = value
    return out


def _section_type(tp: Any) -> type | None:
    """The dataclass behind a field annotation (``X``, ``X | None``), or None for any other type."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _merge_section(cls: type, base: Mapping, update: Mapping) -> dict:
    """``update`` over ``base`` for the fields of dataclass ``cls``: a section (a dataclass field) merges
    key by key unless the update names another variant (``name``), which replaces it; any other field,
    free-form mappings included, is replaced, except for the entries a dotted key sets one by one."""
    if isinstance(cls, type) and isinstance(getattr(cls, "variants", None), dict):
        cls = cls.variants.get(update.get("name", base.get("name")), cls)
    hints = _type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    out = dict(base)
    for key, value in update.items():
        old, section = out.get(key), _section_type(hints.get(key))
        if isinstance(value, Mapping) and isinstance(old, Mapping) and _same_variant(old, value):
            if section is not None:
                out[key] = _merge_section(section, old, value)
                continue
            if isinstance(value, _DottedPath):
                out[key] = _deep_merge(dict(old), value)
                continue
        out[key] = dict(value) if isinstance(value, _DottedPath) else value
    return out


def from_dict(cls: type[T], data: Mapping | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively, with type checks and clear errors.

    ``prefix`` is the dotted path of ``data`` inside the whole config (``"optim."``), used in messages."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__} {data!r}")
    cls, chosen = _variant(cls, data, prefix)
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key(f"{prefix}{key}", [f"{prefix}{name}" for name in fields], chosen))
    missing = [name for name, f in fields.items() if name not in data and _required(f)]
    if missing:
        raise ConfigError(f"missing required config key {', '.join(repr(prefix + m) for m in missing)}")
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError:  # a class defined in a function body with string annotations: fall back to raw types
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _unknown_key(full: str, valid: list[str], chosen: str) -> str:
    close = difflib.get_close_matches(full, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid) or '(none)'}"
    return f"unknown config key {full!r}{hint}{chosen}"


def _variant(cls: type, data: Mapping, prefix: str) -> tuple[type, str]:
    """Resolve a tagged union to its registered subclass; also returns a note for error messages."""
    variants = getattr(cls, "variants", None)
    if not isinstance(variants, dict) or not variants:
        return cls, ""
    default = next((f.default for f in dataclasses.fields(cls) if f.name == "name"), None)
    name = data.get("name", default)
    if not isinstance(name, str) or name not in variants:
        close = difflib.get_close_matches(str(name), list(variants), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown {prefix}name {name!r}; expected one of {', '.join(sorted(variants))}{hint}")
    chosen = variants[name]
    if not issubclass(chosen, cls):
        raise ConfigError(f"{prefix}name {name!r} selects {chosen.__name__}, which is not a {cls.__name__}")
    return chosen, f" (for {prefix}name {name!r})"


def _describe(tp: Any) -> str:
    """A readable type name for messages: ``int | None``, ``list[str]``, ``Literal['a', 'b']``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _describe(a) for a in args)
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, args))}"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _describe(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _got(value: Any) -> str:
    return f"got {type(value).__name__} {value!r}"


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (coercing where lossless) or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(tp, args, value, key)
    if origin is typing.Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list ({_describe(tp)}), {_got(value)}")
        inner = args[0] if args else Any
        return [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        return _convert_tuple(tp, args, value, key)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping ({_describe(tp)}), {_got(value)}")
        k_type, v_type = args if args else (Any, Any)
        return {_convert(k_type, k, f"{key} key {k!r}"): _convert(v_type, v, f"{key}.{k}") for k, v in value.items()}
    return _convert_scalar(tp, value, key)


def _convert_union(tp: Any, args: tuple, value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    errors = []
    for option in options:
        try:
            return _convert(option, value, key)
        except ConfigError as err:
            errors.append(err)
    if len(options) == 1 and len(args) == 1:
        raise errors[0]
    if len(options) == 1 and not _is_scalar(options[0]):
        raise errors[0]  # e.g. list[int] | None: the inner message names the offending element
    raise ConfigError(f"{key} must be {_describe(tp)}, {_got(value)}")


def _is_scalar(tp: Any) -> bool:
    return tp in (int, float, str, bool) or typing.get_origin(tp) is typing.Literal


def _convert_tuple(tp: Any, args: tuple, value: Any, key: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list ({_describe(tp)}), {_got(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if not args:
        return tuple(value)
    if len(value) != len(args):
        raise ConfigError(f"{key} must have {len(args)} values ({_describe(tp)}), got {len(value)}: {value!r}")
    return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _convert_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false (bool), {_got(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer (int), {_got(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number (float), {_got(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a model revision or path that YAML read as a number
        raise ConfigError(f"{key} must be a string (str), {_got(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_describe(tp)}, {_got(value)}")
    return value


def to_dict(obj: Any) -> Any:
    """Dataclasses → plain YAML-safe data (tuples become lists, paths strings); inverse of ``from_dict``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def dump_yaml(obj: Any, path: str | os.PathLike) -> None:
    """Write ``to_dict(obj)`` as YAML, atomically."""
    write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
