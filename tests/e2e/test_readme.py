"""README's commands work as written: the shell blocks marked ``<!-- runnable ... -->`` run, in
order, in one bash session on a fresh copy of the repository (a new venv, one pip install).

Slow (one install, about a minute on an idle machine, several under load): marked ``readme`` as
well as ``e2e`` so CI runs it once (``pytest -m readme``) and a quick local run can leave it out
(``-m 'not readme'``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_RUNNABLE = re.compile(r"<!-- runnable[^>]*-->\n```sh\n(.*?)```", re.S)


def runnable_blocks(text: str) -> list[str]:
    return [block.strip() for block in _RUNNABLE.findall(text)]


def test_readme_marks_the_set_up_and_a_check_as_runnable() -> None:
    blocks = runnable_blocks(README.read_text())
    assert len(blocks) >= 2
    assert blocks[0].startswith("python3 -m venv .venv") and ". .venv/bin/activate" in blocks[0]
    assert any(line.startswith("mds ") for line in blocks[1].splitlines())


def _fresh_copy(dest: Path) -> None:
    """The files a clone would have (tracked, plus new files not ignored), nothing else: no
    .venv, no caches."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.mark.e2e
@pytest.mark.readme
def test_readme_runnable_blocks_work_as_written_on_a_fresh_copy(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _fresh_copy(repo)
    script = "set -euo pipefail\n" + "\n".join(runnable_blocks(README.read_text())) + "\n"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MDS_", "ALPACA_", "APCA_", "REDIS_", "VIRTUAL_ENV", "PYTHON"))
    }
    # No `mds` of ours on PATH: the README's set-up must provide it.
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT))
    )
    done = subprocess.run(
        ["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, (
        f"README blocks failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
