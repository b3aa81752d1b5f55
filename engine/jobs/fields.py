"""A job params model's fields as plain descriptions (kind, default, bounds, choices, label, help), read from the
pydantic model itself.

The CLI options (app/param_options.py) and the dialogs' fields (app/gui/param_form.py) are built from these, so a
default, range or choice is written once, in the params model, and never copied into a front end.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

ValueKind = Literal["int", "float", "bool", "choice", "text"]
_SCALARS: dict[type, ValueKind] = {int: "int", float: "float", bool: "bool", str: "text"}


@dataclass(frozen=True)
class ParamField:
    name: str
    kind: ValueKind  # of the value, or of each item when `multiple`
    title: str
    description: str
    required: bool
    default: Any  # None when required
    optional: bool = False  # None is accepted (a blank value)
    multiple: bool = False  # a list of values
    choices: tuple[Any, ...] = ()
    ge: float | None = None  # inclusive bounds; gt / lt stay exclusive (the model refuses the bound itself)
    le: float | None = None
    gt: float | None = None
    lt: float | None = None
    multiple_of: float | None = None
    min_items: int | None = None
    max_items: int | None = None

    @property
    def minimum(self) -> float | None:
        return self.ge if self.ge is not None else self.gt

    @property
    def maximum(self) -> float | None:
        return self.le if self.le is not None else self.lt

    def convert(self, text: str) -> Any:
        """One value (or list item) typed as text -> the field's Python type; ValueError says why."""
        text = text.strip()
        if self.kind == "choice":
            for choice in self.choices:
                if str(choice) == text:
                    return choice
            raise ValueError(f"'{text}' is not one of {', '.join(str(c) for c in self.choices)}")
        if self.kind == "int":
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"'{text}' is not a whole number") from None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"'{text}' is not a number") from None
        if self.kind == "bool":
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(f"'{text}' is not true or false")
        return text


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):  # Annotated[int, Field(...)] inside an Optional
            found.update(_constraints(item.metadata))
        for attr, key in ((at.Ge, "ge"), (at.Le, "le"), (at.Gt, "gt"), (at.Lt, "lt"),
                          (at.MultipleOf, "multiple_of"), (at.MinLen, "min_items"), (at.MaxLen, "max_items")):
            if isinstance(item, attr):
                found[key] = getattr(item, {"min_items": "min_length", "max_items": "max_length"}.get(key, key))
    return found


def _unwrap(annotation: Any) -> tuple[Any, bool, list[Any]]:
    """(core type, accepts None, constraint metadata found in Annotated wrappers)."""
    optional, metadata = False, []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            metadata.extend(extra)
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(get_args(annotation))
            if len(args) != 1:
                raise TypeError(f"unsupported union {annotation}")
            annotation = args[0]
        else:
            return annotation, optional, metadata


def _value_kind(annotation: Any) -> tuple[ValueKind, tuple[Any, ...]]:
    if get_origin(annotation) is Literal:
        return "choice", get_args(annotation)
    if annotation in _SCALARS:
        return _SCALARS[annotation], ()
    raise TypeError(f"unsupported parameter type {annotation}")


def describe_field(name: str, info: FieldInfo) -> ParamField:
    core, optional, metadata = _unwrap(info.annotation)
    multiple = get_origin(core) is list
    item_metadata: list[Any] = []
    if multiple:
        core, _item_optional, item_metadata = _unwrap(get_args(core)[0])
    kind, choices = _value_kind(core)
    limits = {**_constraints(item_metadata), **_constraints(metadata), **_constraints(info.metadata)}
    required = info.is_required()
    default = None if required else info.get_default(call_default_factory=True)
    title = info.title or name.replace("_", " ").capitalize()
    return ParamField(name=name, kind=kind, title=title, description=info.description or "", required=required,
                      default=default, optional=optional, multiple=multiple, choices=choices, **limits)


def describe_params(model: type[BaseModel]) -> dict[str, ParamField]:
    """Every field of a params model, in declaration order."""
    return {name: describe_field(name, info) for name, info in model.model_fields.items()}
