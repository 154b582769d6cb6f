"""Talking to a running application's rollout decision-maker over HTTP (what `trtserve rollout` does):
`POST /v2/models/{model}/rollout` with {"action": ..., ...}, `GET` for the status."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

from runtime.engine.errors import TrtserveError

ENDED = ("promoted", "rolled_back", "refused")


class RolloutRefused(TrtserveError):
    """The application refused the command (bad state, unknown version): the message is its reason."""

    exit_code = 2


def command(url: str, model: str, action: str, timeout_s: float = 60.0, token: str | None = None, **args: Any) -> dict:
    body = {"action": action, **{k: v for k, v in args.items() if v is not None}}
    return _call(url, model, "POST", json.dumps(body).encode(), timeout_s, token)


def status(url: str, model: str, timeout_s: float = 30.0, token: str | None = None) -> dict:
    return _call(url, model, "GET", None, timeout_s, token)


def wait(url: str, model: str, poll_s: float = 1.0, timeout_s: float | None = None, token: str | None = None) -> dict:
    """Poll until the rollout has ended; its last status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        current = status(url, model, token=token)
        if current.get("state") in ENDED:
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise RolloutRefused(f"{model}: still {current.get('state')} after {timeout_s:g} s")
        time.sleep(poll_s)


def _call(url: str, model: str, method: str, data: bytes | None, timeout_s: float, token: str | None) -> dict:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v2/models/{model}/rollout", data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            reason = e.reason
        if e.code in (401, 403):
            reason = f"{reason} (give a token with the admin scope: --token or TRTSERVE_TOKEN)"
        raise RolloutRefused(f"{model}: {reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise RolloutRefused(f"cannot reach {url}: {getattr(e, 'reason', e)}") from None


_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)?$")


def seconds(text: str) -> float:
    """'30s', '2m', '500ms', '1h' or plain seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 2m or 500ms")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match["unit"]]
    return float(match["n"]) * scale
