"""Bearer tokens and their scopes, from a tokens file of `<scope> <sha256 hex of the token>` lines.

Tokens are never stored in clear, here or in the file: a presented token is hashed and its digest
compared with every entry in constant time (`hmac.compare_digest`, no early exit), so neither the
answer's timing nor a leaked file gives a token away. A token may be listed once per scope it holds;
scopes do not imply each other (an `admin` token that should also infer is listed under both).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from runtime.engine.errors import TrtserveError

INFER = "infer"  # inference and metadata: /v2, /v2/models/{m}[/versions/{v}][/ready|/config|/infer]
ADMIN = "admin"  # operations: rollouts, drift monitor, statistics
FEEDBACK = "feedback"  # labels: /v2/models/{m}/feedback (a labelling service needs no more)
SCOPES = (INFER, ADMIN, FEEDBACK)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_SCOPE_LIKE = re.compile(r"^[a-z_]{1,16}$")  # what a mistyped scope looks like; a token is longer and mixed
_BEARER = re.compile(r"^\s*bearer\s+(?P<token>\S+)\s*$", re.IGNORECASE)


class TokensFileError(TrtserveError):
    """The tokens file cannot be read or has a malformed line; the message names the line."""


def digest(token: str) -> str:
    """What the tokens file holds for `token`: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Verdict:
    """What a request's Authorization header earns for the scope it needs."""

    allowed: bool
    reason: str = "ok"  # ok | missing | malformed | invalid (no valid token) | scope: the failure metric's label
    challenge: str | None = None  # the WWW-Authenticate header's value


@dataclass(frozen=True)
class TokenTable:
    entries: tuple[tuple[str, bytes], ...]  # (scope, SHA-256 digest)

    @classmethod
    def parse(cls, text: str, source: str = "tokens file", allow_empty: bool = False) -> TokenTable:
        """The table of a tokens file's text; TokensFileError naming the line at fault. A file without a token
        is an error unless `allow_empty` (a replica's watcher: an emptied file revokes every token)."""
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            # Messages name the line and what is wrong with it, never its contents: a token pasted in place of
            # its digest would otherwise reach every replica's log.
            if len(fields) != 2:
                raise TokensFileError(
                    f"{source}:{number}: expected '<scope> <sha256 hex of the token>', got {len(fields)} fields"
                )
            scope, hexdigest = fields[0], fields[1].lower()
            if scope not in SCOPES:
                expected = ", ".join(SCOPES)
                named = f" {scope!r}" if _SCOPE_LIKE.match(scope) else ""  # a typo is shown, a secret is not
                raise TokensFileError(f"{source}:{number}: unknown scope{named}; expected one of {expected}")
            if not _DIGEST.match(hexdigest):
                raise TokensFileError(
                    f"{source}:{number}: the second field ({len(fields[1])} characters) is not a SHA-256 hex digest "
                    "(64 hex digits); the file holds `trtserve token` digests, never tokens"
                )
            entries.append((scope, bytes.fromhex(hexdigest)))
        if not entries and not allow_empty:
            raise TokensFileError(f"{source}: no tokens; every request would be refused")
        return cls(tuple(entries))

    @classmethod
    def read(cls, path: str | Path) -> TokenTable:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise TokensFileError(f"cannot read the tokens file {path}: {e}") from None
        return cls.parse(text, str(path))

    def lines(self) -> list[str]:
        """The table as tokens-file lines (what replicas are handed: digests only)."""
        return [f"{scope} {value.hex()}" for scope, value in self.entries]

    def scopes_of(self, token: str) -> frozenset[str]:
        """The scopes `token` holds (none for an unknown one), comparing with every entry."""
        presented = hashlib.sha256(token.encode(errors="surrogateescape")).digest()
        held = set()
        for scope, value in self.entries:
            if hmac.compare_digest(presented, value):
                held.add(scope)
        return frozenset(held)

    def check(self, authorization: str | None, scope: str) -> Verdict:
        """RFC 6750: 401 with a Bearer challenge for a missing, malformed or unknown token; 403 with
        `insufficient_scope` for a valid one without `scope`."""
        realm = 'Bearer realm="trtserve"'
        if not authorization:
            return Verdict(False, "missing", realm)
        match = _BEARER.match(authorization)
        if match is None:
            return Verdict(False, "malformed", f'{realm}, error="invalid_request"')
        held = self.scopes_of(match["token"])
        if not held:
            return Verdict(False, "invalid", f'{realm}, error="invalid_token"')
        if scope not in held:
            return Verdict(False, "scope", f'{realm}, error="insufficient_scope", scope="{scope}"')
        return Verdict(True)
