"""The endpoints of a remote model, without a network: the backoff, the reading of Retry-After,
and which endpoint of a pool takes the next request.

The pool decides where every remote request goes and when a failing server is left alone, so
its rules are checked one by one with explicit ``now`` values (monotonic-like floats) and a
seeded random source: least outstanding wins, ties rotate, ``avoid`` steers a retry elsewhere
while it can, a down endpoint waits out its backoff, successes and health checks bring it back,
and ``info`` shows only the documented figures.
"""

from __future__ import annotations

import datetime
import email.utils
import random
import time
from collections.abc import Iterator

import pytest

from kernel.llm.endpoints import BACKOFF_CAP, Endpoint, EndpointPool, backoff, retry_after

A, B, C = "http://a:8000/v1", "http://b:8000/v1", "http://c:8000/v1"
INFO_KEYS = {
    "url",
    "healthy",
    "up",
    "in_flight",
    "requests",
    "errors",
    "consecutive_failures",
    "backing_off_s",
    "ttft_s",
    "tokens_out",
    "tokens_per_s",
    "last_error",
    "last_error_at",
}


def pool(*urls: str) -> EndpointPool:
    return EndpointPool(list(urls), rand=random.Random(7))


# ---- backoff -----------------------------------------------------------------------------------


def test_backoff_zero_without_failures() -> None:
    assert backoff(0) == 0.0
    assert backoff(-1) == 0.0


def test_backoff_within_upper_half_of_doubling_cap() -> None:
    rand = random.Random(1234)
    for failures in range(1, 40):
        top = min(30.0, 0.5 * 2 ** (failures - 1))
        for _ in range(50):
            assert top / 2 <= backoff(failures, rand) <= top


def test_backoff_is_reproducible_with_a_seed() -> None:
    first = [backoff(f, random.Random(5)) for f in range(1, 10)]
    assert first == [backoff(f, random.Random(5)) for f in range(1, 10)]


def test_backoff_after_very_many_failures_stays_at_the_cap() -> None:
    # a server that fails every request piles up failures; 2.0 ** 1024 must not overflow
    rand = random.Random(3)
    for failures in (1024, 1025, 10_000, 10**9):
        assert BACKOFF_CAP / 2 <= backoff(failures, rand) <= BACKOFF_CAP


# ---- Retry-After -------------------------------------------------------------------------------

NOW = datetime.datetime(2025, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


def http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(NOW + datetime.timedelta(seconds=seconds_from_now), True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7.0), (" 12 ", 12.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0), ("86400", 600.0)],
)
def test_retry_after_seconds(value: str, seconds: float) -> None:
    assert retry_after(value) == seconds


def test_retry_after_http_date() -> None:
    now = NOW.timestamp()
    assert http_date(120).endswith("GMT")
    assert retry_after(http_date(120), now_wall=now) == pytest.approx(120.0)
    assert retry_after(http_date(-60), now_wall=now) == 0.0  # already past
    assert retry_after(http_date(7200), now_wall=now) == 600.0  # capped


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A local time zone hours away from UTC, so that reading a date as local time shows."""
    monkeypatch.setenv("TZ", "EST5")  # POSIX form: five hours west, no tz database needed
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_retry_after_date_without_zone_is_gmt() -> None:
    now = NOW.timestamp()
    assert retry_after(http_date(30), now_wall=now) == pytest.approx(30.0)
    value = http_date(30).replace("GMT", "-0000")  # RFC 5322's "UTC, zone unknown"
    assert retry_after(value, now_wall=now) == pytest.approx(30.0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "soon",
        "nan",
        "Mon, 32 Jan 2025 00:00:00 GMT",
        "Sat, 01 Mar 99999999999999999999 12:00:00 GMT",  # a year no datetime holds
    ],
)
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert retry_after(value, now_wall=NOW.timestamp()) is None


def test_retry_after_infinite_is_capped() -> None:
    assert retry_after("inf") == 600.0
    assert retry_after("1e400") == 600.0


# ---- picking an endpoint -----------------------------------------------------------------------


def test_urls_lose_trailing_slash() -> None:
    assert [e.url for e in EndpointPool(["http://a/v1/", B]).endpoints] == ["http://a/v1", B]


def test_least_outstanding_wins() -> None:
    p = pool(A, B, C)
    a, b, c = p.endpoints
    p.sent(a, 1, 0.0)
    p.sent(a, 2, 0.0)
    p.sent(c, 3, 0.0)
    for _ in range(5):
        assert p.pick(1.0) is b
    p.sent(b, 4, 1.0)
    p.sent(b, 5, 1.0)
    assert p.pick(1.0) is c  # now c has the fewest (1 against 2 and 2)


def test_ties_rotate_between_equal_endpoints() -> None:
    p = pool(A, B, C)
    picks = [p.pick(0.0) for _ in range(6)]
    assert {e.url for e in picks[:3] if e is not None} == {A, B, C}
    assert picks[:3] == picks[3:]
    assert all(picks[i] is not picks[i + 1] for i in range(5))


def test_avoid_is_honoured_while_another_is_usable() -> None:
    p = pool(A, B)
    a, b = p.endpoints
    p.sent(b, 1, 0.0)  # b is busier, but a is to be avoided
    for _ in range(4):
        assert p.pick(0.0, avoid=frozenset({A})) is b
    assert p.pick(0.0, avoid=frozenset({A, B})) is a  # nothing else: avoid is ignored
    p.failed(b, "HTTP 503", 0.0, wait=10.0)
    assert p.pick(1.0, avoid=frozenset({A})) is a  # b backs off: a despite avoid


def test_down_endpoint_is_not_picked_while_another_is_up() -> None:
    p = pool(A, B)
    a, b = p.endpoints
    p.sent(b, 1, 0.0)
    p.sent(b, 2, 0.0)
    p.failed(a, "ConnectError", 0.0, connection=True)
    assert not a.up and a.failures == 1
    for now in (0.0, 100.0, 1000.0):  # long after its backoff too: b is up
        assert p.pick(now) is b


def test_all_down_picks_after_backoff_and_wait_says_when() -> None:
    p = pool(A, B)
    a, b = p.endpoints
    p.failed(a, "ConnectError", 100.0, connection=True, wait=4.0)
    p.failed(b, "ConnectError", 100.0, connection=True, wait=2.0)
    assert p.pick(101.0) is None
    assert p.wait(101.0) == pytest.approx(1.0)  # b's not_before, the earliest
    assert p.pick(102.0) is b  # its backoff passed: this try is its health check
    assert p.wait(102.0) == 0.0
    assert p.pick(104.5) in (a, b)
    assert p.wait(200.0) == 0.0


def test_wait_is_zero_when_one_may_go_now() -> None:
    p = pool(A, B)
    p.failed(p.endpoints[0], "HTTP 503", 10.0, wait=5.0)
    assert p.wait(10.0) == 0.0


def test_backoff_spaces_connection_failures() -> None:
    p = pool(A)
    (a,) = p.endpoints
    p.failed(a, "ConnectError", 50.0, connection=True)
    assert 50.0 + 0.25 <= a.not_before <= 50.0 + 0.5
    p.failed(a, "ConnectError", 50.0, connection=True)
    assert 50.0 + 0.5 <= a.not_before <= 50.0 + 1.0
    assert p.pick(50.0) is None
    assert p.pick(51.0) is a


def test_retry_after_sets_not_before_exactly() -> None:
    p = pool(A, B)
    a, b = p.endpoints
    p.failed(a, "HTTP 429: slow down", 20.0, wait=7.5)
    assert a.not_before == 27.5 and a.up  # a 429 does not mark it down
    assert a.errors == 1 and a.failures == 1 and a.last_error == "HTTP 429: slow down"
    assert a.last_error_at is not None
    assert p.pick(27.0) is b
    p.sent(b, 1, 27.0)
    assert p.pick(27.5) is a  # due again, and less busy
    p.failed(a, "HTTP 429", 21.0, wait=1.0)  # an earlier end does not shorten the pause
    assert a.not_before == 27.5


def test_first_token_clears_failures_and_tracks_ttft() -> None:
    p = pool(A)
    (a,) = p.endpoints
    p.failed(a, "ConnectError", 0.0, connection=True, wait=1.0)
    p.sent(a, 9, 10.0)
    p.first_token(a, 9, 10.4)
    assert a.up and a.failures == 0 and a.not_before == 0.0
    assert a.ttft_ewma == pytest.approx(0.4)
    p.sent(a, 10, 20.0)
    p.first_token(a, 10, 21.4)
    assert a.ttft_ewma == pytest.approx(0.8 * 0.4 + 0.2 * 1.4)
    assert a.errors == 1  # the count of errors stays


def test_succeeded_clears_failures() -> None:
    p = pool(A)
    (a,) = p.endpoints
    p.failed(a, "HTTP 500", 0.0)
    p.failed(a, "HTTP 500", 0.0)
    assert a.failures == 2 and a.up and a.not_before > 0.0
    p.succeeded(a)
    assert a.failures == 0 and a.up and a.not_before == 0.0


def test_probed_ok_brings_a_down_endpoint_back() -> None:
    p = pool(A, B)
    a, b = p.endpoints
    p.failed(a, "ConnectError", 0.0, connection=True, wait=30.0)
    p.sent(b, 1, 0.0)
    assert p.pick(5.0) is b
    p.probed(a, ok=True, now=5.0)
    assert a.up and a.failures == 0 and a.not_before == 5.0
    assert p.pick(5.0) is a


def test_probed_failure_marks_an_up_endpoint_down() -> None:
    p = pool(A, B)
    a, b = p.endpoints
    p.probed(a, ok=False, reason="health check: ConnectError", now=1.0)
    assert not a.up and a.last_error == "health check: ConnectError"
    assert a.errors == 0 and a.failures == 0  # a health check is not a request's failure
    p.sent(b, 1, 1.0)
    assert p.pick(1.0) is b
    p.probed(a, ok=True, now=2.0)
    assert a.info(2.0)["up"] is True and p.pick(2.0) is a


def test_ended_decrements_and_accumulates() -> None:
    p = pool(A)
    (a,) = p.endpoints
    p.sent(a, 1, 10.0)
    p.sent(a, 2, 11.0)
    assert a.outstanding == 2 and a.requests == 2
    p.ended(a, 1, 14.0, tokens=40)
    assert a.outstanding == 1 and a.tokens_out == 40 and a.busy_seconds == pytest.approx(4.0)
    p.ended(a, 2, 12.0, tokens=0)  # nothing came: no busy time either
    assert a.outstanding == 0 and a.tokens_out == 40 and a.busy_seconds == pytest.approx(4.0)
    p.ended(a, 3, 12.0, tokens=5)  # never sent: the count does not go below zero
    assert a.outstanding == 0 and a.tokens_out == 40


def test_info_has_only_the_documented_keys() -> None:
    p = pool(A, B)
    a, b = p.endpoints
    assert all(set(i) == INFO_KEYS for i in p.info(0.0))
    fresh = a.info(0.0)
    assert fresh["healthy"] and fresh["ttft_s"] is None and fresh["tokens_per_s"] is None
    assert fresh["last_error"] is None and fresh["last_error_at"] is None

    p.sent(a, 1, 0.0)
    p.first_token(a, 1, 0.25)
    p.ended(a, 1, 2.0, tokens=30)
    p.sent(a, 2, 2.0)
    p.failed(b, "ConnectError: refused", 5.0, connection=True, wait=3.0)
    ia, ib = p.info(6.0)
    assert set(ia) == INFO_KEYS and set(ib) == INFO_KEYS
    assert ia == {
        "url": A,
        "healthy": True,
        "up": True,
        "in_flight": 1,
        "requests": 2,
        "errors": 0,
        "consecutive_failures": 0,
        "backing_off_s": 0.0,
        "ttft_s": 0.25,
        "tokens_out": 30,
        "tokens_per_s": 15.0,
        "last_error": None,
        "last_error_at": None,
    }
    assert ib["healthy"] is False and ib["up"] is False
    assert ib["backing_off_s"] == 2.0 and ib["consecutive_failures"] == 1
    assert ib["errors"] == 1 and ib["last_error"] == "ConnectError: refused"
    assert isinstance(ib["last_error_at"], float)


def test_backing_off_but_up_is_not_healthy() -> None:
    e = Endpoint(A, not_before=10.0)
    assert e.info(9.0)["healthy"] is False and e.info(9.0)["up"] is True
    assert e.info(10.0)["healthy"] is True
