"""The Prometheus rules in deploy/prometheus: valid, unit-tested by promtool (every alert firing
and not firing), and written against metrics the service really exports."""

from __future__ import annotations

import re
import subprocess

import yaml

from entrypoints.metrics import MetricsSnapshot, ServiceMetrics, StreamSnapshot
from tests.deploy.tools import DEPLOY, need

RULES = DEPLOY / "prometheus" / "mds-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "mds-rules.test.yml"


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    promtool = need("promtool", "prometheus")
    out = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = need("promtool", "prometheus")
    out = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    alerts = {str(r["alert"]) for r in _rules() if "alert" in r}
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts == fired, f"alerts never shown firing: {sorted(alerts - fired)}"
    assert alerts == quiet, f"alerts never shown quiet: {sorted(alerts - quiet)}"


def test_every_alert_says_what_to_check() -> None:
    for rule in _rules():
        if "alert" not in rule:
            continue
        notes = rule["annotations"]
        assert isinstance(notes, dict)
        assert notes.get("summary") and notes.get("description"), rule["alert"]
        # Each description names something concrete to look at: an endpoint, a setting or a log.
        assert re.search(r"GET /|[A-Z]+_[A-Z_]+|log line|systemctl", notes["description"]), rule[
            "alert"
        ]


def test_rules_use_only_metrics_the_service_exports() -> None:
    metrics = ServiceMetrics()
    metrics.refresh_from(
        MetricsSnapshot(
            messages_by_type={"quote": 1},
            decode_errors_by_reason={"bad_json": 1},
            venue_errors_by_code={409: 1},
            # The service always has at least one stream (its per-stream families).
            streams=(StreamSnapshot("us_equity", "connected", False, 1, 1, 0, 1, 1),),
        )
    )
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in metrics.render().decode().splitlines()
        if line and not line.startswith("#")
    }
    used: set[str] = set()
    for rule in _rules():
        used |= set(re.findall(r"\b(mds_[a-z_]+)\b", str(rule["expr"])))
    assert used, "no mds_ metric in the rules?"
    assert used <= exported, f"rules use metrics the service does not export: {used - exported}"
