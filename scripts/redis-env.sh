# Sourced by scripts/test.sh and scripts/run.sh. Makes sure a Redis answers at $1 (a URL); when none
# does and redis-server is installed, starts a throwaway one on a free loopback port and exports
# REDIS_URL pointing at it (stopped on exit). Fails with a clear message otherwise.
ensure_redis() {
  local url="$1"
  if .venv/bin/python - "$url" <<'PY' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
  then
    REDIS_URL="$url"
    return 0
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "error: no Redis answers at $url and redis-server is not installed." >&2
    echo "       Install it (Debian: apt-get install redis-server) or point CANDLECAST_TEST_REDIS_URL at one." >&2
    return 1
  fi
  local port dir
  port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  dir=$(mktemp -d)
  echo "no Redis at $url: starting a throwaway redis-server on 127.0.0.1:$port" >&2
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize no \
    >"$dir/redis.log" 2>&1 &
  THROWAWAY_REDIS_PID=$!
  trap 'kill $THROWAWAY_REDIS_PID 2>/dev/null; rm -rf "'"$dir"'"' EXIT
  for _ in $(seq 50); do
    if redis-cli -p "$port" ping >/dev/null 2>&1; then
      REDIS_URL="redis://127.0.0.1:$port/0"
      return 0
    fi
    sleep 0.1
  done
  echo "error: the throwaway redis-server did not start; see $dir/redis.log" >&2
  return 1
}
