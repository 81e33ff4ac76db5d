"""FeatureHealth: which optional features fail now, since when it is news, and /health's line."""

from __future__ import annotations

from domain.features import HTTP_API, METRICS, RECORDING, FeatureHealth


def test_only_the_first_failure_of_a_working_feature_is_news_and_every_one_is_counted() -> None:
    health = FeatureHealth()
    assert health.fail(RECORDING, "disk full") is True
    assert health.fail(RECORDING, "still full") is False
    assert health.failing == {RECORDING: "still full"}  # the latest reason is shown
    assert health.failures[RECORDING] == 2
    assert health.fail(METRICS, "port taken") is True  # another feature: news of its own


def test_recovery_is_news_only_for_a_feature_that_was_failing() -> None:
    health = FeatureHealth()
    assert health.recover(RECORDING) is False
    health.fail(RECORDING, "disk full")
    assert health.recover(RECORDING) is True
    assert health.failing == {} and health.failures[RECORDING] == 1  # the count stays
    assert health.fail(RECORDING, "disk full again") is True  # failing again is news again


def test_the_health_detail_names_each_failing_feature_and_why_sorted_or_none() -> None:
    health = FeatureHealth()
    assert health.detail() is None
    health.fail(RECORDING, "disk full")
    health.fail(HTTP_API, "port taken")
    assert health.detail() == "http_api failing: port taken; recording failing: disk full"
    health.recover(HTTP_API)
    health.recover(RECORDING)
    assert health.detail() is None
