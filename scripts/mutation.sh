#!/usr/bin/env bash
# Mutation testing (not part of scripts/test.sh: it takes minutes, not seconds).
#  1. mutmut mutates domain/ and application/ and runs the fast tiers (tests/domain,
#     tests/application) against each mutant; tests/mutation/score.py prints the score and fails
#     when a survivor is neither killed nor listed in tests/mutation/equivalent.md.
#  2. tests/mutation/hand_mutants.py: hand-written mutants of the Lua checked write, Alpaca's
#     error table, /health and /ready and the issue-16 behaviours, each run against the tests
#     that own it (needs redis-server, like scripts/test.sh).
# Usage: bash scripts/mutation.sh [--mutmut-only | --hand-only] [MODULE ...]
#   MODULE (e.g. domain.subscriptions application.stream_prices) limits mutmut to those modules.
# The mutants/ cache is deleted first: mutmut keeps verdicts across code changes and then reuses
# a stale map of which tests cover which function (seen: survivors no test was run against).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/mutmut ] || .venv/bin/python -m pip install -q -e '.[test]'
mode="${1:-}"
case "$mode" in --mutmut-only|--hand-only) shift ;; *) mode="" ;; esac
names=(); modules=()
for m in "$@"; do names+=("$m*"); modules+=(--module "$m"); done
status=0
if [ "$mode" != "--hand-only" ]; then
  rm -rf mutants
  HYPOTHESIS_PROFILE=mutation .venv/bin/mutmut run --max-children "${MUTATION_JOBS:-2}" \
    "${names[@]}" > mutants.log 2>&1 || { tail -n 30 mutants.log; exit 1; }
  .venv/bin/python -m tests.mutation.score "${modules[@]}" || status=1
fi
if [ "$mode" != "--mutmut-only" ]; then
  .venv/bin/python -m tests.mutation.hand_mutants || status=1
fi
exit $status
