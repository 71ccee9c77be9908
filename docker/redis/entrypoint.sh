#!/bin/sh
# Renders the ACL (users.acl.template beside this script) with the passwords from the environment,
# then runs redis-server with it and the arguments given. A password must be 16+ characters of
# A-Z a-z 0-9 _ - (it also goes into the services' redis:// URLs); a missing or other one is refused.
set -eu
here=$(dirname "$0")
template=${CANDLECAST_ACL_TEMPLATE:-$here/users.acl.template}
out=${CANDLECAST_ACL_FILE:-/tmp/candlecast-users.acl}
prefix=${CANDLECAST_REDIS_PREFIX:-cc}
case "$prefix" in *[!A-Za-z0-9_.-]* | "") echo "CANDLECAST_REDIS_PREFIX: letters, digits, _ . - only" >&2; exit 2 ;; esac
script="s|@@PREFIX@@|$prefix|g"
for role in INGESTOR WORKER API EXPORTER; do
  eval "password=\${CANDLECAST_REDIS_${role}_PASSWORD:-}"
  case "$password" in
    "") echo "CANDLECAST_REDIS_${role}_PASSWORD is not set: Redis refuses to start without a password for every role" >&2; exit 2 ;;
    *[!A-Za-z0-9_-]*) echo "CANDLECAST_REDIS_${role}_PASSWORD: use only A-Z a-z 0-9 _ - (it goes into a URL)" >&2; exit 2 ;;
  esac
  if [ "${#password}" -lt 16 ]; then
    echo "CANDLECAST_REDIS_${role}_PASSWORD: at least 16 characters" >&2
    exit 2
  fi
  script="$script;s|@@${role}_PASSWORD@@|$password|g"
done
umask 077
sed -e "$script" -e "/^#/d" -e "/^[[:space:]]*$/d" "$template" > "$out"  # an ACL file has no comments
if command -v docker-entrypoint.sh >/dev/null 2>&1; then
  # The Redis image: its own entrypoint drops from root to the redis user, which must read the file.
  chown redis "$out"
  exec docker-entrypoint.sh redis-server --aclfile "$out" "$@"
fi
exec redis-server --aclfile "$out" "$@"
