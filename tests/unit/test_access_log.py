"""Which answered requests get a log line (runtime.serve.access_log), and the `logging:` app args it reads."""

import pytest

from runtime.serve.access_log import AccessLog
from runtime.serve.app_args import RequestLogging, parse_args


def _written(access_log: AccessLog, answers: list[tuple[int, float]]) -> list[int]:
    """The indices of `answers` (status, seconds) that get a line."""
    return [i for i, (status, seconds) in enumerate(answers) if access_log.wants(status, seconds)]


def test_the_default_is_every_error_every_slow_request_and_one_in_a_hundred_of_the_rest():
    access_log = AccessLog()
    assert access_log.settings == RequestLogging(requests="sampled", sample_percent=1.0, slow_ms=1000.0)
    assert _written(access_log, [(200, 0.002)] * 300) == [99, 199, 299]  # counted, not drawn: no randomness
    assert _written(access_log, [(404, 0.001), (503, 0.001), (500, 0.001), (200, 1.5), (200, 0.9)]) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("percent", "every"),
    [(0.1, 1000), (10, 10), (25, 4), (50, 2), (100, 1)],
)
def test_a_share_is_exact_whatever_its_decimals(percent, every):
    access_log = AccessLog(RequestLogging(sample_percent=percent))
    written = _written(access_log, [(200, 0.001)] * (3 * every))
    assert written == [every - 1, 2 * every - 1, 3 * every - 1]


def test_all_writes_every_request_and_errors_only_errors_and_slow_ones():
    answers = [(200, 0.001), (400, 0.001), (200, 0.25), (503, 0.001), (200, 0.001)]
    assert _written(AccessLog(RequestLogging(requests="all")), answers) == [0, 1, 2, 3, 4]
    assert _written(AccessLog(RequestLogging(requests="errors", slow_ms=200)), answers) == [1, 2, 3]
    assert _written(AccessLog(RequestLogging(sample_percent=0, slow_ms=200)), answers * 100) == [
        i for i in range(500) if i % 5 in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    ("logging", "message"),
    [
        ({"requests": "some"}, "logging.requests: Input should be 'all', 'sampled' or 'errors'"),
        ({"sample_percent": 101}, "logging.sample_percent: Input should be less than or equal to 100"),
        ({"slow_ms": 0}, "logging.slow_ms: expected a number > 0, got 0"),
        ({"every": 2}, "logging.every: unknown key; expected one of requests, sample_percent, slow_ms"),
        ("all", "logging: expected a mapping, got 'all'"),
    ],
)
def test_bad_logging_args_are_one_line_naming_the_key(logging, message):
    with pytest.raises(ValueError) as raised:
        parse_args({"repository": "/nowhere", "models": ["cnn"], "logging": logging})
    assert str(raised.value) == f"application args: {message}"
