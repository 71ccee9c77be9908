#!/usr/bin/env bash
# The run command (`make run`): the whole service in one process — ingestion from the project's own
# exchange simulator replaying real Bybit 1m bars from ../shared/data (no internet needed), the worker
# with the shipped models, and the API on http://127.0.0.1:8000 (GET /signal/BTCUSDT, WS /ws,
# /metrics) — storing in Redis under the prefix <CANDLECAST_REDIS_PREFIX>-replay, emptied at start (a
# throwaway Redis is started when none answers).
# For the live market instead (needs internet): CANDLECAST_REDIS_URL=redis://... candlecast run
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/redis-env.sh
ensure_redis "${CANDLECAST_REDIS_URL:-redis://127.0.0.1:6379/0}"
export CANDLECAST_REDIS_URL="$REDIS_URL"
echo "store: CANDLECAST_REDIS_URL=$CANDLECAST_REDIS_URL"
.venv/bin/candlecast run --replay ${CANDLECAST_REPLAY_FILES:-} --speed "${CANDLECAST_REPLAY_SPEED:-60}"
