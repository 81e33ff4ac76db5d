"""The token bucket the HTTP adapters pace their calls with: burst, sustained rate, refill cap."""

from __future__ import annotations

import pytest

from domain.ratelimit import TokenBucket


def test_a_new_bucket_allows_its_burst_at_once_then_paces_at_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    for _ in range(3):
        assert bucket.wait_s(10.0) == 0.0
        bucket.take(10.0)
    assert bucket.wait_s(10.0) == 0.5  # one token at 2 per second
    assert bucket.wait_s(10.25) == 0.25  # half a token came back
    assert bucket.wait_s(10.5) == 0.0


def test_the_wait_is_what_the_missing_part_of_a_token_takes_at_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=4.0, burst=1)
    bucket.take(0.0)
    bucket.take(0.0)  # a caller that did not wait: one token in debt
    assert bucket.wait_s(0.0) == 0.5  # (1 - (-1)) / 4
    assert bucket.wait_s(0.25) == 0.25


def test_an_idle_bucket_refills_to_its_burst_and_no_further() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.wait_s(1_000.0) == 0.0  # idle long enough for 1,000 tokens...
    bucket.take(1_000.0)
    bucket.take(1_000.0)
    assert bucket.wait_s(1_000.0) == 1.0  # ...yet only the burst of 2 was there


def test_the_first_call_starts_the_clock_and_a_clock_going_back_refills_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    bucket.take(100.0)  # the first call: the full burst, whatever the time
    assert bucket.wait_s(99.0) == 1.0  # earlier than the last call: nothing refilled
    assert bucket.wait_s(100.5) == 0.5  # measured from 100, not from 99
    assert bucket.wait_s(101.0) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_a_bucket_without_rate_or_burst_is_refused_naming_both(rate: float, burst: int) -> None:
    with pytest.raises(ValueError) as info:
        TokenBucket(rate, burst)
    assert str(info.value) == (f"need rate_per_s > 0 and burst >= 1, got {rate}, {burst}")


def test_the_smallest_valid_bucket_is_accepted() -> None:
    bucket = TokenBucket(rate_per_s=0.001, burst=1)
    assert bucket.rate_per_s == 0.001 and bucket.burst == 1
    assert bucket.wait_s(0.0) == 0.0


def test_a_token_and_a_half_left_means_no_wait() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=2)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.wait_s(0.75) == 0.0  # 1.5 tokens back: a call may go now
