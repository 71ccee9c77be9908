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
# A Redis Cluster node (docker-compose.cluster.yml) also has the `cluster` user: what `redis-cli --cluster
# create` and the replicas' replication need, nothing else (no key, no channel); replicas log in as it.
cluster_password=${CANDLECAST_REDIS_CLUSTER_PASSWORD:-}
if [ -n "$cluster_password" ]; then
  case "$cluster_password" in *[!A-Za-z0-9_-]*) echo "CANDLECAST_REDIS_CLUSTER_PASSWORD: use only A-Z a-z 0-9 _ -" >&2; exit 2 ;; esac
  if [ "${#cluster_password}" -lt 16 ]; then echo "CANDLECAST_REDIS_CLUSTER_PASSWORD: at least 16 characters" >&2; exit 2; fi
  echo "user cluster on >$cluster_password resetkeys resetchannels -@all +@connection +cluster +info +dbsize +psync +replconf +config|get" >> "$out"
  # in a config file (mode 600), not on the command line, where any process could read it
  printf 'masteruser cluster\nmasterauth %s\n' "$cluster_password" > "$out.conf"
fi
conf=""
[ -n "$cluster_password" ] && conf="$out.conf"
if command -v docker-entrypoint.sh >/dev/null 2>&1; then
  # The Redis image: its own entrypoint drops from root to the redis user, which must read the file.
  chown redis "$out"
  [ -n "$conf" ] && chown redis "$conf"
  exec docker-entrypoint.sh redis-server ${conf:+"$conf"} --aclfile "$out" "$@"
fi
exec redis-server ${conf:+"$conf"} --aclfile "$out" "$@"
