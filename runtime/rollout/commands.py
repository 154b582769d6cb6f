"""The arguments of each `trtserve rollout` command, declared once and checked whole before the
decision-maker acts on any of them: an unknown key, a value of the wrong type (numbers are JSON numbers,
never text or booleans) or out of range is refused with one line naming the key, and nothing changes.

A key given as null is the default, as if it were absent (the CLI leaves out what it was not given).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from runtime.engine.schema import invalid, one_line
from runtime.rollout.analysis import Thresholds
from runtime.rollout.gates import ProfileReport
from runtime.rollout.steps import RolloutError, RolloutOptions, RolloutSpec

MAX_TIMEOUT_S = 60.0  # a command waits at most this long for every replica to route as it says
MAX_REASON = 500  # characters of a rollback's reason, kept in the history
_MAX_MESSAGE = 300  # characters of a refusal: the values it quotes are the client's own
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CommandError(ValueError):
    """A command refused before anything was done; the message is one line naming the key at fault."""


def _version(value: Any) -> str:
    """A positive integer, or its decimal text, as the version's name."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) <= 18 and int(value) >= 1:
        return str(int(value))
    raise invalid(f"expected a version number (a positive integer), got {value!r}")


def _without_control_characters(text: str) -> str:
    """Text kept in the history and written to logs: no line breaks or other control characters."""
    if _CONTROL.search(text):
        raise invalid("expected one line of text, without control characters")
    return text


class CommandArgs(BaseModel):
    """One action's arguments: every key declared, every value checked."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoArgs(CommandArgs):
    """status, history."""


class Wait(CommandArgs):
    """pause, resume, promote: how long to wait for every replica to apply the change."""

    timeout_s: float = Field(10.0, ge=0, le=MAX_TIMEOUT_S)


class Rollback(Wait):
    reason: Annotated[str, AfterValidator(_without_control_characters)] = Field(
        "rolled back by hand", min_length=1, max_length=MAX_REASON
    )


class Start(Wait, RolloutOptions, Thresholds):
    """The candidate, how the rollout moves (RolloutOptions), how an interval is judged (Thresholds) and
    the latency budget gate (runtime.rollout.gates)."""

    to: Annotated[str, BeforeValidator(_version)]
    latency_budget_ms: float | None = Field(None, gt=0)
    profile: ProfileReport | None = None  # what the latency budget is judged on

    @model_validator(mode="after")
    def _budget_with_profile(self) -> Start:
        if self.latency_budget_ms is not None and self.profile is None:
            raise invalid(
                "latency_budget_ms needs a `trtserve capacity profile` report of the candidate", key="profile"
            )
        return self

    def spec(self, model: str, stable: str) -> RolloutSpec:
        """The rollout these arguments start from `stable`; CommandError when the candidate is stable."""
        if self.to == stable:  # the one check that depends on the state
            raise CommandError(f"start: to: version {stable} is already stable")
        thresholds = Thresholds(**self.model_dump(include=set(Thresholds.model_fields)))
        options = self.model_dump(include=set(RolloutOptions.model_fields))
        return RolloutSpec(model=model, stable=stable, candidate=self.to, thresholds=thresholds, **options)


COMMANDS: dict[str, type[CommandArgs]] = {
    "start": Start,
    "status": NoArgs,
    "pause": Wait,
    "resume": Wait,
    "promote": Wait,
    "rollback": Rollback,
    "history": NoArgs,
}


def parse(action: Any, args: Any) -> CommandArgs:
    """The typed arguments of `action`, or CommandError naming the key at fault."""
    command = COMMANDS.get(action) if isinstance(action, str) else None
    if command is None:
        raise CommandError(_line(f"unknown action {action!r}; expected one of {', '.join(COMMANDS)}"))
    if not isinstance(args, dict):
        raise CommandError(f"{action}: the arguments are a JSON object, got {type(args).__name__}")
    given = {k: v for k, v in args.items() if v is not None}
    if given and not command.model_fields:
        raise CommandError(_line(f"{action}: takes no arguments, got {', '.join(map(repr, given))}"))
    try:
        return command.model_validate(given, strict=True)
    except ValidationError as e:
        raise CommandError(_line(f"{action}: {one_line(e, command)}")) from None


class CommandFailed(Exception):
    """The decision-maker failed unexpectedly; its log has why, the client only that it failed."""


@dataclass(frozen=True)
class CommandReply:
    """The decision-maker's answer to one command: its result, or why nothing was done. A value, not an
    exception, so that it crosses the actor boundary as it is; `unwrap` raises the typed error again."""

    result: Any = None
    refused: Literal["invalid", "conflict"] | None = None  # arguments refused; not possible in this state
    error: str = ""  # the refusal's one line
    failed: bool = False

    def unwrap(self) -> Any:
        if self.failed:
            raise CommandFailed("the rollout decision-maker failed; its log has the cause")
        if self.refused == "invalid":
            raise CommandError(self.error)
        if self.refused == "conflict":
            raise RolloutError(self.error)
        return self.result


def _line(message: str) -> str:
    """One short line, whatever the client's keys and values that it quotes."""
    message = _CONTROL.sub(lambda c: repr(c.group())[1:-1], message)
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"
