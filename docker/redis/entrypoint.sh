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
# check_password NAME: the variable NAME must hold 16+ characters of A-Z a-z 0-9 _ -; prints it.
check_password() {
  eval "value=\${$1:-}"
  case "$value" in
    "") echo "$1 is not set: Redis refuses to start without a password for every role" >&2; exit 2 ;;
    *[!A-Za-z0-9_-]*) echo "$1: use only A-Z a-z 0-9 _ - (it goes into a URL)" >&2; exit 2 ;;
  esac
  if [ "${#value}" -lt 16 ]; then
    echo "$1: at least 16 characters" >&2
    exit 2
  fi
  printf '%s' "$value"
}
for role in INGESTOR WORKER API EXPORTER; do
  password=$(check_password "CANDLECAST_REDIS_${role}_PASSWORD")
  script="$script;s|@@${role}_PASSWORD@@|$password|g"
done
umask 077
sed -e "$script" -e "/^#/d" -e "/^[[:space:]]*$/d" "$template" > "$out"  # an ACL file has no comments
# A Redis Cluster node (docker-compose.cluster.yml; CANDLECAST_REDIS_CLUSTER_PASSWORD set) has two more
# users, neither able to read, write or subscribe to anything:
# * `cluster`, for `redis-cli --cluster create` and watching the cluster: the CLUSTER subcommands that
#   build a cluster and read its state, INFO and DBSIZE; no FAILOVER, RESET, FORGET, SETSLOT or DELSLOTS;
# * `replica`, what a replica logs in as to its master: PSYNC, REPLCONF and PING only. PSYNC streams the
#   whole dataset, so its password is a secret of its own (CANDLECAST_REDIS_REPLICA_PASSWORD).
# The replicas' masterauth is readable with CONFIG GET: on a cluster node no user keeps CONFIG GET (the
# exporter reads its statistics without it).
if [ -n "${CANDLECAST_REDIS_CLUSTER_PASSWORD:-}" ]; then
  cluster_password=$(check_password CANDLECAST_REDIS_CLUSTER_PASSWORD)
  replica_password=$(check_password CANDLECAST_REDIS_REPLICA_PASSWORD)
  build="+cluster|addslots +cluster|addslotsrange +cluster|meet +cluster|replicate +cluster|set-config-epoch"
  watch="+cluster|info +cluster|nodes +cluster|myid +cluster|slots +cluster|shards"
  echo "user cluster on >$cluster_password resetkeys resetchannels -@all +@connection +info +dbsize $build $watch" >> "$out"
  echo "user replica on >$replica_password resetkeys resetchannels -@all +psync +replconf +ping" >> "$out"
  sed -i -e '/^user exporter /s/ +config|get//' "$out"
  # in a config file (mode 600), not on the command line, where any process could read it
  printf 'masteruser replica\nmasterauth %s\n' "$replica_password" > "$out.conf"
fi
conf=""
[ -n "${CANDLECAST_REDIS_CLUSTER_PASSWORD:-}" ] && conf="$out.conf"
if command -v docker-entrypoint.sh >/dev/null 2>&1; then
  # The Redis image: its own entrypoint drops from root to the redis user, which must read the file.
  chown redis "$out"
  [ -n "$conf" ] && chown redis "$conf"
  exec docker-entrypoint.sh redis-server ${conf:+"$conf"} --aclfile "$out" "$@"
fi
exec redis-server ${conf:+"$conf"} --aclfile "$out" "$@"
