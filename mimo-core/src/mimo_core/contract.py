"""One convention for every JSON contract of the project: a dataclass with `to_dict` / `from_dict` and a `schema`.

A contract is a dataclass that inherits `Contract`. `from_dict` validates on read against the field annotations
(str, int, float, bool, None, Any, Literal, unions, lists, tuples, dicts with str keys, nested contracts) and raises
`ContractError` naming the failing path, such as `results.configurations[0].figures: missing ds`. A class with a
`SCHEMA` writes it as `schema` and refuses JSON without it or with any other. Unknown fields are an error unless the class sets
`EXTRA = "keep"`, in which case they are kept in the field named `extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

C = TypeVar("C", bound="Contract")


class ContractError(ValueError):
    """JSON that does not fit its contract; the message is one line naming where."""


class Contract:
    """Base of the project's JSON contracts (see the module docstring)."""

    SCHEMA: ClassVar[str | None] = None
    EXTRA: ClassVar[Literal["forbid", "keep"]] = "forbid"

    def to_dict(self) -> dict[str, Any]:
        """The object as JSON-safe values, with `schema` first when the class has one."""
        out: dict[str, Any] = {"schema": self.SCHEMA} if self.SCHEMA else {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra" and self.EXTRA == "keep":
                out.update(value)
            else:
                out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: Any, where: str | None = None) -> C:
        """The object from its dict, validated; ContractError names the first thing wrong."""
        where = cls.__name__ if where is None else where
        if not isinstance(data, dict):
            raise ContractError(_say(where, f"must be an object, not {_kind(data)}"))
        if cls.SCHEMA and data.get("schema") != cls.SCHEMA:
            raise ContractError(_say(where, f"unknown schema {data.get('schema')!r} (expected {cls.SCHEMA!r})"))
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        keep = cls.EXTRA == "keep"
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key == "schema" and cls.SCHEMA:
                continue
            if key in fields and not (keep and key == "extra"):
                values[key] = convert(hints[key], value, _at(where, key))
            elif keep:
                extra[key] = value
            else:
                raise ContractError(_say(where, f"unknown field {key!r}"))
        missing = [name for name, f in fields.items() if name not in values and not (keep and name == "extra")
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ContractError(_say(where, f"missing {', '.join(missing)}"))
        if keep:
            values["extra"] = extra
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:  # a __post_init__ check
            raise ContractError(_say(where, str(exc))) from None

    @classmethod
    def from_json(cls: type[C], text: str, where: str | None = None) -> C:
        """The object from JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{where or cls.__name__}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data, where)

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        """The object from a JSON file; ContractError (one line, naming the file) if it cannot be used."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ContractError(f"{path}: {exc.strerror or exc}") from None
        return cls.from_json(text, str(path))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _say(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _plain(value: Any) -> Any:
    if isinstance(value, Contract):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_SCALARS = {bool: "a boolean", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def convert(tp: Any, value: Any, where: str) -> Any:
    """`value` checked against the annotation `tp` (nested contracts built), or ContractError at `where`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return convert(arm, value, where)
            except ContractError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ContractError(_say(where, f"{_kind(value)} fits none of {tp}"))
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ContractError(_say(where, f"{value!r} is not one of {', '.join(map(repr, args))}"))
    if isinstance(tp, type) and issubclass(tp, Contract):
        return tp.from_dict(value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise ContractError(_say(where, f"must be a list, not {_kind(value)}"))
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ContractError(_say(where, f"must have {len(args)} items, not {len(value)}"))
            return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ContractError(_say(where, f"must be an object, not {_kind(value)}"))
        item = args[1] if args else Any
        return {k: convert(item, v, _at(where, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None:
            return None
    else:
        raise TypeError(f"contract annotation {tp!r} at {where} is not supported")
    raise ContractError(_say(where, f"must be {_SCALARS[tp]}, not {_kind(value)}"))
