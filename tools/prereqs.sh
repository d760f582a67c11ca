#!/usr/bin/env bash
# What `make test` needs beyond Go, each with how to install it: the first target of `make test`,
# so a fresh machine hears what is missing at once instead of tests failing (or skipping) one by
# one. A tool is checked only when the tree has what needs it (promtool once the Makefile or a
# test calls it, a browser once a test drives one). On CI, .ci/run installs what is missing.
set -uo pipefail
cd "$(dirname "$0")/.."

missing=0
need() { # need WHAT-NEEDS-IT HOW-TO-INSTALL TOOL [ALTERNATIVE...]
  local why=$1 how=$2
  shift 2
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 && return 0
  done
  echo "make test: missing $1, for $why."
  echo "           install: $how"
  missing=1
}

need "the tests' own Redis servers and postamt up" \
  "Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis" redis-server
need "the restore drill's Redis backup (faults: TestRestoreDrill, redis-cli --rdb)" \
  "Debian/Ubuntu: sudo apt-get install redis-tools (redis-server depends on it); macOS: brew install redis" redis-cli
need "the calendar's CalDAV tests against a real Radicale server" \
  "Debian/Ubuntu: sudo apt-get install radicale; elsewhere: pip install radicale" radicale
need "the version stamp and the generated-code check" \
  "Debian/Ubuntu: sudo apt-get install git; macOS: xcode-select --install" git
if git grep -qI promtool -- Makefile '*.go' ':!tools/prereqs.sh' 2>/dev/null; then
  need "checking and unit-testing the Prometheus alert rules" \
    "Debian/Ubuntu: sudo apt-get install prometheus (it ships promtool); macOS: brew install prometheus" promtool
fi
if git grep -qIiE 'chromedp|chromium|headless.?chrome' -- '*_test.go' 2>/dev/null; then
  need "the browser tests" \
    "Debian: sudo apt-get install chromium; Ubuntu: sudo snap install chromium; macOS: brew install --cask chromium" \
    chromium chromium-browser google-chrome google-chrome-stable headless-shell
fi
if [ "$missing" -ne 0 ]; then
  echo "make test: install the above (README.md, Set-up), then run it again."
  exit 1
fi
