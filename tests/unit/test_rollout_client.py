"""`trtserve rollout`'s argument parsing and its error for an application it cannot reach."""

import pytest

from runtime.cli import main
from runtime.rollout.client import seconds


@pytest.mark.parametrize(("text", "value"), [("30s", 30), ("2m", 120), ("500ms", 0.5), ("1h", 3600), ("45", 45)])
def test_durations(text, value):
    assert seconds(text) == value


def test_a_bad_duration_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["rollout", "start", "cnn", "--to", "2", "--interval", "soon"])
    assert exit_.value.code == 2 and "not a duration" in capsys.readouterr().err


def test_an_unreachable_application_is_one_line_and_exit_2(capsys):
    assert main(["rollout", "status", "cnn", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trtserve rollout status: error: cannot reach http://127.0.0.1:9") and err.count("\n") == 1
