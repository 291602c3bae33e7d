#!/bin/sh
# Waits for the Temporal frontend, registers the namespace ferry runs in (once, with a
# retention) and ferry's search attributes on it (SQL visibility: Keyword aliases; adding
# one that exists is a no-op). Run by docker-compose (temporal-setup, admin-tools image) and
# by `ferry cluster up`.
#
# Environment: TEMPORAL_ADDRESS (host:port of the frontend),
#   FERRY_SEARCH_ATTRIBUTES (space-separated Keyword attributes; src/common/search-attributes.ts),
#   optional: FERRY_NAMESPACE (default), FERRY_NAMESPACE_RETENTION (72h),
#   TEMPORAL_CLI (default: temporal on PATH), FERRY_HEALTH_WAIT_S (120).
set -eu

cli=${TEMPORAL_CLI:-temporal}
address=${TEMPORAL_ADDRESS:?TEMPORAL_ADDRESS (the frontend host:port) is not set}
ns=${FERRY_NAMESPACE:-default}
retention=${FERRY_NAMESPACE_RETENTION:-72h}
attributes=${FERRY_SEARCH_ATTRIBUTES:?FERRY_SEARCH_ATTRIBUTES is not set}

waited=0
until "$cli" operator cluster health --address "$address" >/dev/null 2>&1; do
  if [ "$waited" -ge "${FERRY_HEALTH_WAIT_S:-120}" ]; then
    echo "setup-namespace: Temporal at $address not healthy after ${waited} s" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done

if "$cli" operator namespace describe --address "$address" --namespace "$ns" >/dev/null 2>&1; then
  echo "setup-namespace: namespace $ns exists"
else
  echo "setup-namespace: registering namespace $ns (retention $retention)"
  "$cli" operator namespace create --address "$address" --namespace "$ns" --retention "$retention"
fi

# One --name and one --type per attribute (the CLI pairs them by position).
flags=""
for a in $attributes; do flags="$flags --name $a --type Keyword"; done
echo "setup-namespace: search attributes $attributes (Keyword)"
# A namespace just registered is "not found" until the frontend's namespace cache refreshes
# (seconds): try again until it answers.
waited=0
# shellcheck disable=SC2086 # the flags split on purpose
until out=$("$cli" operator search-attribute create --address "$address" --namespace "$ns" $flags 2>&1); do
  if [ "$waited" -ge "${FERRY_HEALTH_WAIT_S:-120}" ]; then
    echo "$out" >&2
    echo "setup-namespace: search attributes not added after ${waited} s" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done
echo "$out"
