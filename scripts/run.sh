#!/usr/bin/env bash
# The run command (`make run`): ingestion from the project's own exchange simulator replaying real
# Bybit 1m bars from ../shared/data — no internet needed — into Redis. Watch it with
#   .venv/bin/candlecast inspect BTCUSDT      (with CANDLECAST_REDIS_URL exported as printed below)
# For the live market instead: CANDLECAST_REDIS_URL=redis://... .venv/bin/candlecast ingest
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/redis-env.sh
ensure_redis "${CANDLECAST_REDIS_URL:-redis://127.0.0.1:6379/0}"
export CANDLECAST_REDIS_URL="$REDIS_URL"
echo "store: CANDLECAST_REDIS_URL=$CANDLECAST_REDIS_URL"
.venv/bin/candlecast ingest --replay ${CANDLECAST_REPLAY_FILES:-} --speed "${CANDLECAST_REPLAY_SPEED:-60}"
