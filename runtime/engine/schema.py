"""What our typed contracts (model configs, the Serve app's arguments) share: pydantic fields with our
own error messages, and validation errors turned into one line that names the key, e.g.
`inputs[1].shape: dim 'frames' is not declared under dims`."""

from __future__ import annotations

import math
import re
import types
import typing
from functools import partial
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError


class Schema(BaseModel):
    """A mapping whose keys are all declared: an unknown key is an error (a typo, usually)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def invalid(message: str, key: str | None = None) -> PydanticCustomError:
    """A validation error with our own message; `key`, relative to where it is raised, names the key at
    fault when that is not the value being validated (a check across keys, in a model validator)."""
    return PydanticCustomError("trtserve", "{message}", {"message": message, "key": key})


def _number(value: Any, minimum: float | None = None, above: float | None = None) -> float:
    # YAML 1.1 reads `1e-4` (no dot) as a string; accept it as the number it obviously is.
    if isinstance(value, bool):
        raise invalid(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise invalid(f"expected a number, got {value!r}") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise invalid(f"expected a finite number >= {minimum:g}, got {value!r}")
    if above is not None and number <= above:
        raise invalid(f"expected a number > {above:g}, got {value!r}")
    return number


def _integer(value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(f"expected an integer >= {minimum}, got {value!r}")
    return value


def matching(pattern: str, wanted: str) -> BeforeValidator:
    """Text matching `pattern`, else `wanted, got ...`."""
    compiled = re.compile(pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str) or not compiled.match(value):
            raise invalid(f"{wanted}, got {value!r}")
        return value

    return BeforeValidator(check)


def one_of(choices: tuple[str, ...], what: str) -> BeforeValidator:
    def check(value: Any) -> str:
        if value not in choices:
            raise invalid(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
        return value

    return BeforeValidator(check)


def non_empty_list(message: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise invalid(message)
        return value

    return BeforeValidator(check)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise invalid("expected a non-empty name")
    return value


Number = Annotated[float, BeforeValidator(_number)]
NonNegative = Annotated[float, BeforeValidator(partial(_number, minimum=0.0))]
Positive = Annotated[float, BeforeValidator(partial(_number, above=0.0))]
PositiveInt = Annotated[int, BeforeValidator(_integer)]
NonNegativeInt = Annotated[int, BeforeValidator(partial(_integer, minimum=0))]
Name = Annotated[str, BeforeValidator(_name)]
CallableRef = Annotated[str, matching(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", "expected 'package.module:callable'")]

# Pydantic's own error types, in the words the rest of our messages use.
_TYPE_WORDS = {
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "string_type": "text",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def first_problem(error: ValidationError, schema: type[BaseModel]) -> tuple[str | None, str]:
    """(key, message) of a validation error's first problem, the key written as in the document."""
    problem = error.errors()[0]
    # Without the tags pydantic adds for the members of a union ("function-before[...]", "literal[...]").
    loc = [part for part in problem["loc"] if not (isinstance(part, str) and "[" in part)]
    key = _key(loc)
    ctx = problem.get("ctx") or {}
    if problem["type"] == "trtserve":
        message, below = ctx["message"], ctx.get("key")
        if below:
            key = f"{key}{below}" if below.startswith("[") or not key else f"{key}.{below}"
    elif problem["type"] == "missing":
        message = "required key is missing"
    elif problem["type"] == "extra_forbidden":
        message = f"unknown key; expected one of {', '.join(_fields_at(schema, loc[:-1]))}"
    elif problem["type"] in _TYPE_WORDS:
        message = f"expected {_TYPE_WORDS[problem['type']]}, got {problem['input']!r}"
    else:
        message = problem["msg"]
    return key or None, message


def one_line(error: ValidationError, schema: type[BaseModel]) -> str:
    key, message = first_problem(error, schema)
    return f"{key}: {message}" if key else message


def _key(loc: list) -> str:
    """('inputs', 0, 'shape') -> 'inputs[0].shape'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _fields_at(schema: type[BaseModel], loc: list) -> list[str]:
    """The keys the schema allows at `loc` (for an unknown key's message)."""
    annotation: Any = schema
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
            annotation = annotation.model_fields[part].annotation
        else:  # a list's item, a dict's value
            args = typing.get_args(annotation)
            annotation = args[-1] if args else Any
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """The type inside Annotated[...] and Optional[...]."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation
