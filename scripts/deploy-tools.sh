# Sourced by scripts/test.sh. The deployment checks (tests/deploy) run the real tools: promtool and
# prometheus (Debian package `prometheus`) and docker-compose (Debian package `docker-compose`); the
# API's /docs check (tests/service/test_api_docs.py) runs a real headless browser (Debian `chromium`);
# the Redis Cluster and outage tests start their own redis-server nodes (Debian `redis-server`, which
# brings redis-cli for `redis-cli --cluster create`).
# Installs them when missing and this shell can (root with apt-get, as on CI). Where it cannot, it says
# so loudly and those tests skip with a visible reason; where it could but the install fails, it fails.
ensure_deploy_tools() {
  local missing=()
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the headless-browser check of /docs
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || missing+=(redis-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "WARNING: ${missing[*]} missing and not installable here (needs root and apt-get):" >&2
    echo "         the deployment checks in tests/deploy will be SKIPPED. Install: apt-get install ${missing[*]}" >&2
    return 0
  fi
  echo "installing ${missing[*]} (Debian packages) for the deployment checks" >&2
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -qq "${missing[@]}")
  # Package lists can be stale or absent on a fresh machine: refresh once and retry.
  "${apt[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1; "${apt[@]}" >/dev/null; } || {
    echo "error: could not install ${missing[*]} with apt-get" >&2
    return 1
  }
}
