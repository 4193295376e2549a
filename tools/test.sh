#!/bin/bash
# The test command: set-up, lint, type check, shellcheck, then all test tiers
# (unit, root, vm). Under CI=true a skipped test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
echo "== ruff" >&2
.venv/bin/ruff check .
echo "== mypy" >&2
.venv/bin/mypy
echo "== shellcheck" >&2
mapfile -t scripts < <(git ls-files -- '*.sh' 'hooks/*' 'dracut-module/*' 'demo/*' | sort -u)
if [ ${#scripts[@]} -gt 0 ]; then shellcheck -x "${scripts[@]}"; fi
echo "== pytest" >&2
exec .venv/bin/pytest "$@"
