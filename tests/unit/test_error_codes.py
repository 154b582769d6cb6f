"""The one mapping of request errors to HTTP statuses and gRPC codes, and the route table that uses it."""

import asyncio

import pytest

from runtime.auth.tokens import ADMIN, FEEDBACK, INFER, SCOPES, TokenTable, digest
from runtime.engine.errors import InputError
from runtime.rollout.commands import CommandError, CommandFailed, CommandReply
from runtime.rollout.steps import RolloutError
from runtime.serve.body import BodyTooLarge, BodyTooSlow
from runtime.serve.dynamic_batcher import Overloaded, TimedOut
from runtime.serve.error_codes import (
    INTERNAL,
    MethodNotAllowed,
    NotAuthenticated,
    NotFound,
    NotPermitted,
    WarmingUp,
    code_of,
    http_headers,
    message_of,
)
from runtime.serve.handler import MODEL_ROUTES, SERVER_ROUTES, HttpHandler, match_route
from runtime.serve.model import ServedModel
from runtime.serve.protocol import ProtocolError
from tests.fixtures.artifacts import sequence_model


@pytest.mark.parametrize(
    ("error", "http", "grpc"),
    [
        (ProtocolError("x"), 400, "INVALID_ARGUMENT"),
        (InputError("x"), 400, "INVALID_ARGUMENT"),
        (CommandError("x"), 400, "INVALID_ARGUMENT"),
        (NotAuthenticated("x", "Bearer"), 401, "UNAUTHENTICATED"),
        (NotPermitted("x", "Bearer"), 403, "PERMISSION_DENIED"),
        (NotFound("x"), 404, "NOT_FOUND"),
        (MethodNotAllowed("x", ("GET",)), 405, "UNIMPLEMENTED"),
        (BodyTooSlow("x"), 408, "DEADLINE_EXCEEDED"),
        (RolloutError("x"), 409, "FAILED_PRECONDITION"),
        (BodyTooLarge("x"), 413, "RESOURCE_EXHAUSTED"),
        (Overloaded("x"), 503, "UNAVAILABLE"),
        (WarmingUp("x"), 503, "UNAVAILABLE"),
        (TimedOut("x"), 504, "DEADLINE_EXCEEDED"),
        (KeyError("total"), 500, "INTERNAL"),
        (CommandFailed("x"), 500, "INTERNAL"),
    ],
)
def test_each_error_has_one_status_and_one_grpc_code(error, http, grpc):
    code = code_of(error)
    assert (code.http, code.grpc) == (http, grpc)
    assert ("retry-after" in http_headers(error, code)) is (http == 503)


def test_an_internal_error_says_nothing_of_its_cause():
    error = OverflowError("/srv/secret/path: Python int too large")
    assert message_of(error, code_of(error), "req-7") == "internal error; request id req-7"
    assert code_of(error) is INTERNAL


def test_a_rollout_reply_raises_its_typed_error_again():
    assert CommandReply(result={"state": "paused"}).unwrap() == {"state": "paused"}
    for reply, error in (
        (CommandReply(refused="invalid", error="bad"), CommandError),
        (CommandReply(refused="conflict", error="busy"), RolloutError),
        (CommandReply(failed=True), CommandFailed),
    ):
        with pytest.raises(error):
            reply.unwrap()


def test_every_route_names_a_method_of_the_handler_and_a_known_scope():
    for route in (*SERVER_ROUTES.values(), *MODEL_ROUTES.values()):
        assert callable(getattr(HttpHandler, route.action)), route
        assert route.scope in (None, *SCOPES)
    assert match_route("/v2/models/seq/versions/2/infer")[1:] == ("seq", "2")
    assert match_route("/v2/models/seq/versions/2/rollout")[0] is None  # a rollout is the model's, not a version's
    assert match_route("/v2/models/stats")[0] is SERVER_ROUTES["/v2/models/stats"]


@pytest.fixture
def guarded(tmp_path):
    model = ServedModel(sequence_model(tmp_path / "seq" / "1"))
    model.warmup()
    tokens = {scope: f"{scope}-token-{i:03d}" for i, scope in enumerate(SCOPES)}
    table = TokenTable.parse("\n".join(f"{scope} {digest(token)}" for scope, token in tokens.items()))
    yield HttpHandler([model], auth=table), tokens
    model.close()


def test_each_route_asks_for_its_scope_then_its_method(guarded):
    """As the table says, for every route: no token 401, another scope's token 403, the wrong method 405
    with Allow, all before a byte of the body is read."""
    handler, tokens = guarded
    paths = {**{path: path for path in SERVER_ROUTES}, **{s: f"/v2/models/seq{s}" for s in MODEL_ROUTES}}
    routes = {**SERVER_ROUTES, **MODEL_ROUTES}
    for key, path in paths.items():
        route = routes[key]
        wrong = "DELETE"
        if route.scope is None:
            assert call(handler, "GET", path).status == 200, path
            continue
        assert call(handler, route.methods[0], path).status == 401, path
        other = next(s for s in (INFER, ADMIN, FEEDBACK) if s != route.scope)
        assert call(handler, route.methods[0], path, tokens[other]).status == 403, path
        answer = call(handler, wrong, path, tokens[route.scope])
        assert answer.status == 405 and answer.headers["allow"] == ", ".join(route.methods), path


def call(handler, method, path, token=None):
    headers = {"authorization": f"Bearer {token}"} if token else {}

    class Unread:
        async def read(self, limit):
            raise AssertionError("the body was read")

        def release(self):
            pass

    return asyncio.run(handler.handle(method, path, headers, Unread()))


def test_the_http_api_reference_lists_every_status():
    from runtime.serve.error_codes import _TABLE
    from tests.conftest import ROOT

    page = (ROOT / "docs" / "reference" / "http-api.md").read_text()
    documented = {
        int(line.split("|")[1]) for line in page.splitlines() if line.startswith("| ") and line[2:5].isdigit()
    }
    assert {code.http for _, code in _TABLE} | {INTERNAL.http} <= documented
