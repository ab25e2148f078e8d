"""Typed configuration: dataclasses filled from YAML files and command-line overrides.

Each stage owns a dataclass (``TileConfig`` in ``wsi_pipeline.tiling``, ``EmbedConfig`` ...). Its field defaults
are the truth; ``configs/<stage>.yaml`` shows the same defaults (a test keeps them equal). Values are resolved in
this order, later winning:

1. the dataclass defaults,
2. the ``<stage>:`` section of a ``--config FILE`` (a preset from ``configs/presets/`` or the user's own),
3. explicit CLI options, and ``--set key=value`` (dotted keys reach nested dataclasses, values parsed as YAML;
   ``5e-4`` is a number, as in YAML 1.2).

Unknown keys and values of the wrong type raise ``ConfigError`` naming the key, so typos never pass silently: a
config file's top level must be stage sections (``SECTIONS``), and the section a stage reads is checked against
its dataclass, nested sections included; each error names the file, the unknown name, the valid ones and the
closest match. A YAML syntax error names the line and column. Pure Python: the CLI checks config files before any
heavy library is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, UsageError

__all__ = ["load_config", "config_to_dict", "parse_set_overrides", "read_yaml", "merge_overrides", "SECTIONS"]

# The top-level sections a config file may hold: one per stage (``submit`` also passes the file to each stage).
SECTIONS: tuple[str, ...] = ("tile", "embed", "annotate", "train", "predict", "submit", "cohort")

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 numbers, as users write them: ``5e-4`` and ``1E3`` are floats (YAML 1.1,
    which PyYAML follows, wants ``5.0e-4`` and reads ``5e-4`` as a string), and there are no base-60 numbers, which
    read a Slurm time ``12:00:00`` as the integer 43200 (``--time=43200`` is 30 days)."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def closest(name: str, valid: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the valid name closest to ``name`` (difflib), or ''."""
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _yaml_error(path: Path, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or err.__class__.__name__
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return ConfigError(f"{where}: not valid YAML{at}: {problem}; fix the syntax there")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file (and the line and column of a syntax error)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; check the --config path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the config file as UTF-8") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror}); check the path") from err
    try:
        data = _load_yaml(text) or {}
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (tile:, embed:, ...) at the top level")
    return data


def check_sections(path: str | Path, data: Mapping[str, Any], cls: type | None = None, section: str = "") -> None:
    """Raise ``ConfigError`` for a top-level key of a config file that is no stage section, naming it, the valid
    sections and the closest one; a key of ``cls`` (the stage being configured) written at the top level is told to
    go under ``section:``."""
    sections = SECTIONS if section in SECTIONS or not section else (*SECTIONS, section)
    for key in data:
        if key in sections:
            continue
        if cls is not None and dataclasses.is_dataclass(cls) and key in _field_names(cls):
            raise ConfigError(
                f"{path}: {key!r} is a key of the {section}: section, not a section; write it indented under "
                f"'{section}:' (sections: {', '.join(sections)})"
            )
        raise ConfigError(f"{path}: unknown section {key!r}{closest(key, sections)} (sections: {', '.join(sections)})")


def _field_names(cls: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Raise ``ConfigError`` for the first key of ``data`` (recursively into nested dataclass sections) that is no
    field of ``cls``: ``<where>.<key>: unknown key 'x'; did you mean 'y'? (valid keys: ...)``."""
    hints = typing.get_type_hints(cls)
    valid = _field_names(cls)
    for key, value in data.items():
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}{closest(key, valid)} (valid keys: {', '.join(valid)})")
        nested = _dataclass_of(hints[key])
        if nested is not None and isinstance(value, Mapping):
            check_keys(nested, value, f"{where}.{key}")


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field holds (``Mask`` or ``Mask | None``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg  # type: ignore[return-value]
    return None


def parse_set_overrides(items: Iterable[str] | None) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=foo"]`` into ``{"a.b": 1, "c": "foo"}`` (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set mask.method=otsu")
        try:
            out[key.strip()] = _load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise UsageError(f"--set {item!r}: the value is not valid YAML; quote it: --set 'key=\"...\"'") from err
    return out


def merge_overrides(*mappings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge flat override mappings left to right, dropping ``None`` values (options the user did not give)."""
    merged: dict[str, Any] = {}
    for mapping in mappings:
        for key, value in (mapping or {}).items():
            if value is not None:
                merged[key] = value
    return merged


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's annotated type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return _build(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if hint is Path:
        return Path(value)
    return value


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        hint = closest(unknown[0], fields)
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint} (valid keys: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain YAML/JSON-safe data (paths become strings, tuples lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return plain(config)


def load_config(
    cls: type[T],
    section: str,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build a stage config: dataclass defaults <- ``section`` of ``config_file`` <- ``overrides``.

    Parameters
    ----------
    cls
        The stage's config dataclass, e.g. ``TileConfig``.
    section
        Its section name in config files, e.g. ``"tile"``.
    config_file
        Optional YAML file with top-level sections; other stages' sections are ignored.
    overrides
        Flat mapping of dotted keys to values (``{"mask.method": "fixed"}``); ``None`` values are ignored.

    Examples
    --------
    >>> from wsi_pipeline.tiling import TileConfig
    >>> cfg = load_config(TileConfig, "tile", None, {"target_mpp": 1.0})
    """
    tree: dict[str, Any] = config_to_dict(cls())
    if config_file is not None:
        data = read_yaml(config_file)
        check_sections(config_file, data, cls, section)
        section_data = data.get(section) or {}
        if not isinstance(section_data, Mapping):
            raise ConfigError(f"{config_file}: section {section!r} must be a mapping of keys (e.g. tile_size: 224)")
        check_keys(cls, section_data, f"{config_file}: {section}")
        tree = _deep_merge(tree, section_data)
        _build(cls, tree, f"{config_file}: {section}")  # a wrong value in the file: the error names the file
    for key, value in (overrides or {}).items():
        if value is not None:
            _check_override(cls, key, section)
            _set_dotted(tree, key, value)
    return _build(cls, tree, section)


def _check_override(cls: type, dotted: str, section: str) -> None:
    """An override's dotted key must name a field (nested sections included): else a ``UsageError`` naming it and
    the closest valid key (a ``--set`` typo is a usage mistake)."""
    node: Any = cls
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(node) if f.init}
        if part not in fields:
            where = ".".join(parts[:depth]) or section
            raise UsageError(
                f"--set {dotted}: unknown key {part!r} in {where}{closest(part, fields)} "
                f"(valid keys: {', '.join(sorted(fields))})"
            )
        nested = _dataclass_of(typing.get_type_hints(node)[part])
        if nested is None:
            if depth < len(parts) - 1 and typing.get_origin(typing.get_type_hints(node)[part]) is not dict:
                raise UsageError(f"--set {dotted}: {part!r} is a setting, not a section")
            return
        node = nested


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
