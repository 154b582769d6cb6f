"""The one mapping of what a request can fail with to what a client is told: an HTTP status (and the gRPC
status code a gRPC front end answers with), declared once as a table.

Errors are raised, typed, where they arise (the protocol, the body reader, the batcher, the rollout commands,
the edge's own below) and never carry a status; a front end asks `code_of` and answers. Anything not in the
table is an internal error: its text stays in the log, the client learns only the request id.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.engine.errors import InputError
from runtime.rollout.commands import CommandError
from runtime.rollout.gates import GateInputError
from runtime.rollout.steps import RolloutError
from runtime.serve.body import BodiesInFlightFull, BodyIncomplete, BodyTooLarge, BodyTooSlow
from runtime.serve.capture_sink import FeedbackError, FeedbackUnavailable
from runtime.serve.dynamic_batcher import Overloaded, TimedOut
from runtime.serve.protocol import ProtocolError

RETRY_AFTER_S = 1  # what an answer worth retrying (warming up, overloaded) asks a client to wait


class NotFound(Exception):
    """No such model, version or route."""


class MethodNotAllowed(Exception):
    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allowed = allowed


class WarmingUp(Exception):
    """The server or a model is not ready yet; worth trying again shortly."""


class NotAuthenticated(Exception):
    """No token, a malformed one or an unknown one (RFC 6750: the challenge says which)."""

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge


class NotPermitted(NotAuthenticated):
    """A valid token without the scope the route needs."""


class RequestFailed(Exception):
    """A failure the client may not see the cause of (logged where it happened)."""


@dataclass(frozen=True)
class ErrorCode:
    http: int
    grpc: str  # the name of a grpc.StatusCode
    template: str = "{error}"  # the client's message; {subject}: what failed, e.g. "model 'cnn'"
    retry: bool = False  # worth retrying: answered with Retry-After


# First match wins: a subclass is listed before its base.
_TABLE: tuple[tuple[type[Exception] | tuple[type[Exception], ...], ErrorCode], ...] = (
    (
        (ProtocolError, InputError, FeedbackError, BodyIncomplete, CommandError, GateInputError),
        ErrorCode(400, "INVALID_ARGUMENT"),
    ),
    (NotPermitted, ErrorCode(403, "PERMISSION_DENIED")),
    (NotAuthenticated, ErrorCode(401, "UNAUTHENTICATED")),
    (NotFound, ErrorCode(404, "NOT_FOUND")),
    (MethodNotAllowed, ErrorCode(405, "UNIMPLEMENTED")),
    (BodyTooSlow, ErrorCode(408, "DEADLINE_EXCEEDED")),
    (RolloutError, ErrorCode(409, "FAILED_PRECONDITION")),
    (BodyTooLarge, ErrorCode(413, "RESOURCE_EXHAUSTED")),
    (Overloaded, ErrorCode(503, "UNAVAILABLE", "{subject} is overloaded: {error}", retry=True)),
    ((WarmingUp, BodiesInFlightFull, FeedbackUnavailable), ErrorCode(503, "UNAVAILABLE", retry=True)),
    (TimedOut, ErrorCode(504, "DEADLINE_EXCEEDED", "{subject} timed out: {error}")),
)
INTERNAL = ErrorCode(500, "INTERNAL", "internal error; request id {request_id}")

# Errors of the request's own making, before any model work: never a verdict on the model (a rollout's).
BEFORE_WORK = (BodyTooLarge, BodyTooSlow, BodyIncomplete, BodiesInFlightFull)


def code_of(error: BaseException) -> ErrorCode:
    for kinds, code in _TABLE:
        if isinstance(error, kinds):
            return code
    return INTERNAL


def message_of(error: BaseException, code: ErrorCode, request_id: str, subject: str = "the server") -> str:
    """The client's message; an internal error's says nothing of its cause."""
    return code.template.format(error=error, subject=subject, request_id=request_id)


def http_headers(error: BaseException, code: ErrorCode) -> dict[str, str]:
    headers = {}
    if code.retry:
        headers["retry-after"] = str(RETRY_AFTER_S)
    if isinstance(error, NotAuthenticated):
        headers["www-authenticate"] = error.challenge
    if isinstance(error, MethodNotAllowed):
        headers["allow"] = ", ".join(error.allowed)
    return headers
