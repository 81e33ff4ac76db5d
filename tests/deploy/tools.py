"""Find the operations tools the deploy tests need (installed by scripts/test.sh where missing)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def need(tool: str, package: str) -> str:
    """The path of ``tool``; in CI a missing tool fails the test (scripts/test.sh installs it),
    elsewhere it skips with the install command."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} not found: apt-get install {package} (scripts/test.sh does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
