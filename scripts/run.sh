#!/usr/bin/env bash
# The run command (`make run`): ingestion from the project's own exchange simulator replaying real
# Bybit 1m bars from ../shared/data (no internet needed) into Redis, and a worker turning every
# closed minute into a signal with the shipped models. Watch it with
#   CANDLECAST_REDIS_URL=<printed below> .venv/bin/candlecast inspect BTCUSDT
#   redis-cli -u <printed below> GET 'cc:{BTCUSDT}:signal'
# For the live market instead (needs internet): CANDLECAST_REDIS_URL=redis://... candlecast ingest
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/redis-env.sh
ensure_redis "${CANDLECAST_REDIS_URL:-redis://127.0.0.1:6379/0}"
export CANDLECAST_REDIS_URL="$REDIS_URL"
echo "store: CANDLECAST_REDIS_URL=$CANDLECAST_REDIS_URL"
.venv/bin/candlecast worker &
WORKER_PID=$!
trap 'kill $WORKER_PID 2>/dev/null; wait $WORKER_PID 2>/dev/null; ${THROWAWAY_REDIS_PID:+kill $THROWAWAY_REDIS_PID}' EXIT
.venv/bin/candlecast ingest --replay ${CANDLECAST_REPLAY_FILES:-} --speed "${CANDLECAST_REPLAY_SPEED:-60}"
