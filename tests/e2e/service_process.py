"""Start the service as a real process and talk to it: the code lives in
:mod:`entrypoints.testbed.service_process` (the chaos soak uses it too); re-exported here for the
e2e and fault tests."""

from __future__ import annotations

from entrypoints.testbed.service_process import (
    KEY,
    ROOT,
    SECRET,
    SERVICE,
    ServiceProcess,
    metric_total,
    parse_metrics,
    start_service,
    without,
)

__all__ = [
    "KEY",
    "ROOT",
    "SECRET",
    "SERVICE",
    "ServiceProcess",
    "metric_total",
    "parse_metrics",
    "start_service",
    "without",
]
