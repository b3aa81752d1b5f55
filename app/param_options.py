"""argparse options derived from a job's pydantic params model: names, defaults, choices and help are read from the
model (engine.jobs.fields), so the CLI never restates a default, and values are checked by the same model the
engine uses, with errors that name the option and its field.

Option names are the field names with dashes (`image_size` -> `--image-size`); a list is written comma-separated
(`--scales 1,2`); a bool is `--name` / `--no-name`.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel

from engine.errors import DefectScopeError
from engine.jobs.fields import ParamField, describe_params
from engine.jobs.registry import param_problems


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _help(field: ParamField, override: str | None) -> str:
    text = override or field.description
    if field.default is not None and not isinstance(field.default, bool):
        shown = ",".join(map(str, field.default)) if field.multiple else field.default
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    return text.replace("%", "%%")


def add_param_options(parser: argparse.ArgumentParser, model: type[BaseModel], *, exclude: Collection[str] = (),
                      only: Collection[str] | None = None, optional: Collection[str] = (),
                      help: Mapping[str, str] | None = None) -> list[str]:
    """Adds one option per field of `model` (those in `only` if given, but not `exclude`); returns the fields
    added. A required field is a required option unless named in `optional` (the command fills it another way)."""
    added = []
    for name, field in describe_params(model).items():
        if name in exclude or (only is not None and name not in only):
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": field.default,
                                  "help": _help(field, (help or {}).get(name))}
        if field.kind == "bool" and not field.multiple:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field.kind == "choice" and not field.multiple:
            kwargs["choices"] = [str(c) for c in field.choices]
        elif field.multiple:
            kwargs["metavar"] = "A,B" if not field.choices else ",".join(str(c) for c in field.choices[:2])
        if field.required and name not in optional:
            kwargs["required"] = True
        parser.add_argument(option_name(name), **kwargs)
        added.append(name)
    return added


def _value(field: ParamField, value: Any) -> Any:
    """An option's value as the model takes it: text given on the command line is converted here (so a bad value is
    one clear line naming the option), defaults come from the model already typed."""
    if not isinstance(value, str):
        return value
    try:
        if field.multiple:
            return [field.convert(item) for item in value.split(",") if item.strip()]
        return field.convert(value)
    except ValueError as exc:
        raise DefectScopeError(f"{option_name(field.name)}: {exc}") from None


def params_from_args(args: argparse.Namespace, model: type[BaseModel], *,
                     exclude: Collection[str] = ()) -> dict[str, Any]:
    """The parsed options of the model's fields as a params dict (fields without an option, or unset, are left
    out, so the model's default applies)."""
    params = {}
    for name, field in describe_params(model).items():
        value = getattr(args, name, None)
        if name not in exclude and value is not None:
            params[name] = _value(field, value)
    return params


def check_params(model: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """Validates with the params model; a refused value exits 2 with one line naming its option and field."""
    problems = param_problems(model, params)
    if problems:
        described = describe_params(model)

        def where(field: str) -> str:
            top = field.split(".", 1)[0]
            return f"{option_name(top)} ({field})" if top in described else field

        raise DefectScopeError("; ".join(f"{where(field)}: {message}" for field, message in problems))
    return params
