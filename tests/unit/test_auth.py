"""Bearer tokens: the tokens file, constant-time matching, and the 401/403 answers of the handler."""

import asyncio

import orjson
import pytest

from runtime.auth.tokens import ADMIN, FEEDBACK, INFER, TokensFileError, TokenTable, digest, new_token
from runtime.serve.handler import HttpHandler
from runtime.serve.model import ServedModel
from runtime.serve.telemetry import Telemetry
from tests.fixtures.artifacts import sequence_model

INFER_TOKEN, ADMIN_TOKEN, BOTH_TOKEN = "infer-token-123", "admin-token-456", "both-token-789"
LABELS_TOKEN = "labels-token-012"
TOKENS = f"""# scope digest
infer {digest(INFER_TOKEN)}
admin {digest(ADMIN_TOKEN)}
feedback {digest(LABELS_TOKEN)}
infer {digest(BOTH_TOKEN)}
admin {digest(BOTH_TOKEN).upper()}

"""


def test_parse_reads_scopes_and_digests_never_tokens():
    table = TokenTable.parse(TOKENS)
    assert table.scopes_of(INFER_TOKEN) == {INFER}
    assert table.scopes_of(ADMIN_TOKEN) == {ADMIN}
    assert table.scopes_of(BOTH_TOKEN) == {INFER, ADMIN}
    assert table.scopes_of("nope") == frozenset()
    assert table.scopes_of(digest(INFER_TOKEN)) == frozenset()  # the digest itself is not a token
    assert TokenTable.parse("\n".join(table.lines())) == table
    assert all(INFER_TOKEN not in line for line in table.lines())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("infer", "tokens.txt:1: expected '<scope> <sha256 hex of the token>'"),
        (f"root {digest('x')}", "tokens.txt:1: unknown scope 'root'; expected one of infer, admin"),
        ("infer my-secret-token", "tokens.txt:1: the second field (15 characters) is not a SHA-256 hex digest"),
        ("infer-my-secret-token", "tokens.txt:1: expected '<scope> <sha256 hex of the token>', got 1 fields"),
        (f"Xk3-my-secret-token {digest('x')}", "tokens.txt:1: unknown scope; expected one of infer, admin"),
        (f"infer {digest('x')}\ninfer abc", "tokens.txt:2:"),
        ("# nothing\n\n", "tokens.txt: no tokens"),
    ],
)
def test_malformed_tokens_files_name_the_line(text, message):
    with pytest.raises(TokensFileError) as e:
        TokenTable.parse(text, "tokens.txt")
    assert str(e.value).startswith(message)
    assert "secret" not in str(e.value)  # the line's contents are never echoed: it may be a pasted token


def test_unreadable_tokens_file(tmp_path):
    with pytest.raises(TokensFileError, match="cannot read the tokens file"):
        TokenTable.read(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    ("header", "scope", "status", "reason"),
    [
        (None, INFER, 401, "missing"),
        ("", INFER, 401, "missing"),
        (f"Basic {INFER_TOKEN}", INFER, 401, "malformed"),
        ("Bearer", INFER, 401, "malformed"),
        (f"Bearer {INFER_TOKEN} extra", INFER, 401, "malformed"),
        ("Bearer wrong", INFER, 401, "invalid"),
        (f"Bearer {INFER_TOKEN}", ADMIN, 403, "scope"),
        (f"Bearer {ADMIN_TOKEN}", INFER, 403, "scope"),
        (f"Bearer {INFER_TOKEN}", INFER, 200, "ok"),
        (f"bearer  {ADMIN_TOKEN} ", ADMIN, 200, "ok"),
        (f"Bearer {BOTH_TOKEN}", ADMIN, 200, "ok"),
    ],
)
def test_check(header, scope, status, reason):
    verdict = TokenTable.parse(TOKENS).check(header, scope)
    assert (verdict.reason, verdict.allowed) == (reason, status == 200)
    if status != 200:
        assert verdict.challenge.startswith('Bearer realm="trtserve"')
    if status == 403:
        assert f'error="insufficient_scope", scope="{scope}"' in verdict.challenge


def test_new_tokens_are_long_and_distinct():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) >= 43 for t in tokens)


class Failures(Telemetry):
    def __init__(self):
        self.reasons = []

    def auth_failed(self, reason):
        self.reasons.append(reason)


@pytest.fixture
def secured(tmp_path):
    model = ServedModel(sequence_model(tmp_path / "seq" / "1"))
    model.warmup()
    telemetry = Failures()
    handler = HttpHandler([model], telemetry=telemetry, auth=TokenTable.parse(TOKENS))
    yield handler, telemetry
    model.close()


def call(handler, method, path, token=None, body=b""):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return asyncio.run(handler.handle(method, path, headers, body))


INFER_BODY = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]})
ROUTES = [  # method, path, body, the scope it needs
    ("GET", "/v2", b"", INFER),
    ("GET", "/v2/models/seq", b"", INFER),
    ("GET", "/v2/models/seq/ready", b"", INFER),
    ("GET", "/v2/models/seq/versions/1/config", b"", INFER),
    ("POST", "/v2/models/seq/infer", INFER_BODY, INFER),
    ("POST", "/v2/models/seq/versions/1/infer", INFER_BODY, INFER),
    ("GET", "/v2/models/stats", b"", ADMIN),
    ("GET", "/v2/models/seq/stats", b"", ADMIN),
    ("GET", "/v2/models/seq/versions/1/monitor", b"", ADMIN),
    ("GET", "/v2/models/seq/rollout", b"", ADMIN),
    ("POST", "/v2/models/seq/feedback", b"[]", FEEDBACK),
]
TOKEN_OF = {INFER: INFER_TOKEN, ADMIN: ADMIN_TOKEN, FEEDBACK: LABELS_TOKEN}


@pytest.mark.parametrize(("method", "path", "body", "scope"), ROUTES)
def test_every_route_needs_its_scope(secured, method, path, body, scope):
    handler, telemetry = secured
    missing, wrong = call(handler, method, path, None, body), call(handler, method, path, "x", body)
    # Scopes imply nothing: every token holding another scope alone is refused (an admin token cannot label,
    # a labelling service cannot roll out).
    lacking = [call(handler, method, path, TOKEN_OF[other], body) for other in TOKEN_OF if other != scope]
    assert (missing.status, wrong.status, *(r.status for r in lacking)) == (401, 401, 403, 403)
    assert missing.headers["www-authenticate"] == 'Bearer realm="trtserve"'
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert all(repr(scope) in orjson.loads(r.body)["error"] for r in lacking)
    assert telemetry.reasons == ["missing", "invalid", "scope", "scope"]
    allowed = call(handler, method, path, TOKEN_OF[scope], body)
    assert allowed.status not in (401, 403), allowed.body  # 404 where this handler has no rollouts


def test_health_stays_open_and_unknown_routes_need_a_token(secured):
    handler, telemetry = secured
    assert call(handler, "GET", "/v2/health/live").status == 200
    assert call(handler, "GET", "/v2/health/ready").status == 200
    assert call(handler, "GET", "/v2/health/ready/").status == 200
    assert call(handler, "GET", "/metrics").status == 401  # nothing about the server shows without a token
    assert call(handler, "GET", "/metrics", INFER_TOKEN).status == 404
    assert call(handler, "GET", "/v2/health/live/../../models/seq").status == 401
    assert telemetry.reasons == ["missing", "missing"]


def test_without_auth_nothing_is_asked(tmp_path):
    model = ServedModel(sequence_model(tmp_path / "seq" / "1"))
    model.warmup()
    try:
        assert call(HttpHandler([model]), "POST", "/v2/models/seq/infer", None, INFER_BODY).status == 200
    finally:
        model.close()


# the application's args and the CLI


def test_app_args_read_the_tokens_file_where_the_app_is_built(tmp_path, monkeypatch):
    from runtime.serve.app_args import parse_args

    repository = tmp_path / "repo"
    sequence_model(repository / "seq" / "1")
    (tmp_path / "tokens.txt").write_text(TOKENS)
    monkeypatch.chdir(tmp_path)
    args = parse_args({"repository": str(repository), "models": ["seq"], "auth": {"tokens_file": "tokens.txt"}})
    assert args.auth.table == TokenTable.parse(TOKENS)
    (tmp_path / "bad.txt").write_text(f"infer {digest('a')}\ninfer {INFER_TOKEN}\n")
    with pytest.raises(ValueError, match=r"auth\.tokens_file: .*bad\.txt:2: .* is not a SHA-256 hex digest"):
        parse_args({"repository": str(repository), "models": ["seq"], "auth": {"tokens_file": "bad.txt"}})
    with pytest.raises(ValueError, match=r"auth\.tokens_file: cannot read the tokens file"):
        parse_args({"repository": str(repository), "models": ["seq"], "auth": {"tokens_file": "absent.txt"}})
    with pytest.raises(ValueError, match=r"auth\.tokens_file: required key is missing"):
        parse_args({"repository": str(repository), "models": ["seq"], "auth": {"token": "x"}})


def test_token_command_prints_the_token_once_and_appends_digests(tmp_path, capsys):
    from runtime.cli import main

    tokens = tmp_path / "tokens.txt"
    assert main(["token", "infer", "admin", "--file", str(tokens)]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "infer", "--file", str(tokens)]) == 0
    other = capsys.readouterr().out.strip()
    text = tokens.read_text()
    assert token not in text and other not in text
    assert text.splitlines() == [f"infer {digest(token)}", f"admin {digest(token)}", f"infer {digest(other)}"]
    assert TokenTable.read(tokens).scopes_of(token) == {INFER, ADMIN}
    assert (tokens.stat().st_mode & 0o777) == 0o600
