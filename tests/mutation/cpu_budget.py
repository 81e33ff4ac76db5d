"""A CPU budget per test while mutmut tests a mutant (pytest plugin, loaded by
``[tool.mutmut] pytest_add_cli_args``; it does nothing outside a mutant's child process).

Mutants that hang do so by spinning: under trio's MockClock with autojump a loop that never
blocks never lets virtual time advance, so the tests' ``fail_after`` guards never fire. mutmut
only stops such a child after a wall-clock timeout ((estimated test time + 1 s) x
``timeout_multiplier``), seconds per mutant, and a wall clock is also the wrong measure on a
shared machine. Here each test gets ``MUTATION_TEST_CPU_S`` seconds of the child's CPU time
(default 1; the slowest fast-tier test takes about 0.15 s): past it the child exits with
mutmut's "timeout" code (36), which ``tests/mutation/score.py`` counts as killed, as mutmut does.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Generator
from types import FrameType

import pytest

TIMEOUT_EXIT_CODE = 36  # mutmut: status_by_exit_code[36] == "timeout"


def _in_a_mutants_child() -> bool:
    # mutmut sets MUTANT_UNDER_TEST to the mutant's name in the forked child; in its own
    # process it is "stats", "fail" or "" (the stats, forced-fail and clean runs).
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


def _out_of_budget(signum: int, frame: FrameType | None) -> None:
    os._exit(TIMEOUT_EXIT_CODE)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    if not _in_a_mutants_child():
        return (yield)
    budget = float(os.environ.get("MUTATION_TEST_CPU_S", "1"))
    signal.signal(signal.SIGPROF, _out_of_budget)
    signal.setitimer(signal.ITIMER_PROF, budget)  # counts this process's CPU time
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
