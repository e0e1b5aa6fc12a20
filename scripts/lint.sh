#!/usr/bin/env bash
# `make lint`: the checks CI runs before the tests. Each tool's configuration is in the repository:
#   - ruff (ruff.toml): pyflakes, pycodestyle, bugbear and blind-except over every Python file, and
#     the formatter's check (`ruff format --check`; run `.venv/bin/ruff format .` to apply it);
#   - shellcheck (severity warning) over every shell script, .ci/run included (the example app's
#     start.sh keeps the original tutorial's backticks, which are style-level only);
#   - mypy (setup.cfg [mypy]) over the product packages: controllerkit, initializer, podwatch, sidecar, proxy.
# Exits non-zero when any of them finds something; prints which.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
VENV=${VENV:-.venv}
failed=()

echo "[lint] ruff check"
"$VENV/bin/ruff" check . || failed+=(ruff)

echo "[lint] ruff format --check"
"$VENV/bin/ruff" format --check . || failed+=(ruff-format)

echo "[lint] shellcheck"
mapfile -t scripts < <(git ls-files '*.sh' 2>/dev/null || find . -name '*.sh' -not -path './.venv/*' -not -path './.tools/*')
shellcheck -S warning "${scripts[@]}" .ci/run || failed+=(shellcheck)

echo "[lint] mypy (product packages)"
"$VENV/bin/mypy" || failed+=(mypy)

if [ ${#failed[@]} -gt 0 ]; then
  echo "[lint] FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "[lint] clean"
