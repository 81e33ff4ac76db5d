#!/usr/bin/env bash
# Install everything the tests need into .venv and run the whole suite:
# lint (ruff), types (mypy --strict), layer contracts (import-linter), then pytest.
# Works on a fresh machine: installs redis-server with apt-get when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-server not found: installing it (Debian package redis-server)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
  # The package may start a service on 6379; the tests never use it, they start their own.
fi

# The deploy tests need promtool and prometheus (Debian's prometheus), systemd-analyze (systemd)
# and a headless browser for the live page (Debian's chromium). Install what is missing without
# starting any service the packages bring (policy-rc.d 101: "do not start").
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages) for the deploy and browser tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  policy_added=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d; policy_added=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
  if [ -n "$policy_added" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

echo "== ruff";           .venv/bin/ruff check .
echo "== mypy --strict";  .venv/bin/mypy domain ports application adapters entrypoints tests
echo "== import-linter";  .venv/bin/lint-imports
echo "== pytest";         .venv/bin/python -m pytest "$@"
