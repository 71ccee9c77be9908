#!/usr/bin/env bash
# The test command (`make test`, and CI through .ci/run): lint, type-check, then the whole suite
# against a real Redis. pytest exits 5 when no tests ran, which fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/redis-env.sh
. scripts/deploy-tools.sh
ensure_deploy_tools
ensure_redis "${CANDLECAST_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"
export CANDLECAST_TEST_REDIS_URL="$REDIS_URL"
echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy
echo "== pytest (Redis at $CANDLECAST_TEST_REDIS_URL)"
.venv/bin/pytest "$@"
