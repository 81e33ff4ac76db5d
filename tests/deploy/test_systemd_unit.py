"""deploy/systemd/market-data-service.service: accepted by systemd-analyze verify (no warning),
and its stop/restart policy matches how the service exits."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from entrypoints.service import EXIT_CONFIG
from tests.deploy.tools import DEPLOY, need

UNIT = DEPLOY / "systemd" / "market-data-service.service"


def _service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "systemd")
    # verify checks that ExecStart exists: point it at this machine's interpreter, nothing else
    # changes.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace("/opt/market-data-service/.venv/bin/python", sys.executable)
    )
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout + out.stderr == "", out.stdout + out.stderr  # unknown keys only warn


def test_a_configuration_error_is_not_restarted() -> None:
    service = _service_section()
    assert service["Restart"] == "on-failure"
    assert str(EXIT_CONFIG) in service["RestartPreventExitStatus"].split()


def test_graceful_stop_with_sigterm_inside_the_timeout() -> None:
    service = _service_section()
    assert service["KillSignal"] == "SIGTERM"
    # The service exits within ~2 s of SIGTERM (tests/fault): leave it several times that.
    assert int(service["TimeoutStopSec"]) >= 10
