"""Typed stage configs: YAML files plus ``key.sub=value`` overrides, validated by one pydantic model per stage.

Unknown keys are errors that name the key and the closest valid one; every problem becomes a one-line UserError.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rlhf.errors import UserError
from rlhf.paths import resolve_path


class Section(BaseModel):
    """Base of every config model: unknown keys are rejected and assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


C = TypeVar("C", bound=Section)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=3`` -> (["a", "b"], 3). The value is read as a YAML scalar/flow value, so types come out right."""
    if "=" not in item:
        raise UserError(f"override {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each ``key.sub=value`` into a nested dict (creating sections as needed)."""
    for item in overrides:
        parts, value = parse_override(item)
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
    apply_overrides(data, list(overrides or []))
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
