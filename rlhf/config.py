"""Typed stage configs: YAML files plus ``key.sub=value`` overrides, validated by one pydantic model per stage.

Unknown keys are errors that name the key and the closest valid one; every problem becomes a one-line UserError.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from rlhf.errors import UserError
from rlhf.paths import resolve_path


class Section(BaseModel):
    """Base of every config model: unknown keys are rejected and assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


C = TypeVar("C", bound=Section)


def split_override(item: str) -> tuple[list[str], str]:
    """``a.b=3`` -> (["a", "b"], "3"): the key path and the value exactly as typed."""
    if "=" not in item:
        raise UserError(f"override {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"override {item!r}: empty key")
    return parts, raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=3`` -> (["a", "b"], 3). The value is read as a YAML scalar/flow value, so types come out right."""
    parts, raw = split_override(item)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def field_at(cls: type[Section], parts: list[str]) -> FieldInfo | None:
    """The field a dotted key names in ``cls`` (descending through sections), or None if it names none."""
    field = None
    for i, part in enumerate(parts):
        if cls is None or part not in cls.model_fields:
            return None
        field = cls.model_fields[part]
        cls = _section_class(field.annotation) if i < len(parts) - 1 else None
    return field


def _accepts(field: FieldInfo, value: Any) -> bool:
    try:
        kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        TypeAdapter(kind).validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def typed_override(cls: type[Section] | None, item: str) -> tuple[list[str], Any]:
    """Like parse_override, but a value the key's type names is taken as written: ``oracle=off`` is the Literal
    member "off" (YAML would say False), ``name=3`` is the string "3" for a str field. YAML's reading wins
    whenever the field accepts it (or the key is unknown here: check_keys reports that later)."""
    parts, value = parse_override(item)
    _, raw = split_override(item)
    field = field_at(cls, parts) if cls is not None else None
    if field is not None and value != raw and not _accepts(field, value) and _accepts(field, raw):
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str], cls: type[Section] | None = None) -> dict:
    """Set each ``key.sub=value`` into a nested dict (creating sections as needed); ``cls`` types the values
    (see typed_override)."""
    for item in overrides:
        parts, value = typed_override(cls, item)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def _section_class(annotation: Any) -> type[Section] | None:
    """The Section subclass behind a field annotation (unwrapping Optional/Union), if any."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _section_class(arg)
            if found is not None:
                return found
    return None


def check_keys(cls: type[Section], data: Any, where: str, prefix: str = "") -> None:
    """Reject unknown keys before pydantic runs, so the message can suggest the closest valid key."""
    if not isinstance(data, dict):
        return
    fields = cls.model_fields
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys here: {', '.join(fields)}"
            raise UserError(f"{where}: unknown key '{dotted}'{hint}")
        sub = _section_class(fields[key].annotation)
        if sub is not None:
            check_keys(sub, value, where, prefix=f"{dotted}.")


def validate(cls: type[C], data: dict, where: str) -> C:
    """Build the typed config or raise one line naming the key and what is wrong with it."""
    check_keys(cls, data, where)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        got = first.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        raise UserError(f"{where}: key '{key}': {first['msg']}{got_s}") from None


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, or a UserError naming the file."""
    p = resolve_path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: not valid YAML") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    """Config = YAML file (optional) + overrides, validated by ``cls``."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []), cls)
    return validate(cls, data, where=str(path) if path is not None else "config")


def yaml_header(path: Path) -> list[str]:
    """The leading comment lines of a YAML file, without '#'."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return lines


def describe_fields(cls: type[Section], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every field, recursing into sections; used by ``--help``."""
    rows = []
    for name, field in cls.model_fields.items():
        sub = _section_class(field.annotation)
        if sub is not None:
            if field.default is None:  # an optional section: say so, then list its keys
                rows.append((f"{prefix}{name}", "None", field.description or "optional section"))
            rows.extend(describe_fields(sub, prefix=f"{prefix}{name}."))
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((f"{prefix}{name}", default, field.description or ""))
    return rows
