#!/bin/sh
# Waits for the Temporal frontend, registers the namespace ferry runs in (once, with a
# retention) and ferry's search attributes on it (SQL visibility: Keyword aliases; adding
# one that exists is a no-op). Run by docker-compose (temporal-setup, admin-tools image) and
# by `ferry cluster up`.
#
# Environment: TEMPORAL_ADDRESS (host:port of the frontend),
#   FERRY_SEARCH_ATTRIBUTES (space-separated Keyword attributes; src/common/search-attributes.ts),
#   optional: FERRY_NAMESPACE (default), FERRY_NAMESPACE_RETENTION (72h),
#   TEMPORAL_CLI (default: temporal on PATH), FERRY_HEALTH_WAIT_S (120),
#   FERRY_TEMPORAL_TLS_CA / _CERT / _KEY / _SERVER_NAME (mutual TLS to the frontend).
set -eu

cli=${TEMPORAL_CLI:-temporal}
address=${TEMPORAL_ADDRESS:?TEMPORAL_ADDRESS (the frontend host:port) is not set}
ns=${FERRY_NAMESPACE:-default}
retention=${FERRY_NAMESPACE_RETENTION:-72h}
attributes=${FERRY_SEARCH_ATTRIBUTES:?FERRY_SEARCH_ATTRIBUTES is not set}

# How every call below reaches the frontend; with mutual TLS it presents the client
# certificate (paths without spaces).
conn="--address $address"
if [ -n "${FERRY_TEMPORAL_TLS_CA:-}" ]; then
  conn="$conn --tls-ca-path $FERRY_TEMPORAL_TLS_CA"
  if [ -n "${FERRY_TEMPORAL_TLS_CERT:-}" ]; then conn="$conn --tls-cert-path $FERRY_TEMPORAL_TLS_CERT --tls-key-path ${FERRY_TEMPORAL_TLS_KEY:?FERRY_TEMPORAL_TLS_KEY goes with FERRY_TEMPORAL_TLS_CERT}"; fi
  if [ -n "${FERRY_TEMPORAL_TLS_SERVER_NAME:-}" ]; then conn="$conn --tls-server-name $FERRY_TEMPORAL_TLS_SERVER_NAME"; fi
fi

waited=0
# shellcheck disable=SC2086 # $conn splits on purpose
until "$cli" operator cluster health $conn >/dev/null 2>&1; do
  if [ "$waited" -ge "${FERRY_HEALTH_WAIT_S:-120}" ]; then
    echo "setup-namespace: Temporal at $address not healthy after ${waited} s" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done

if "$cli" operator namespace describe $conn --namespace "$ns" >/dev/null 2>&1; then
  echo "setup-namespace: namespace $ns exists"
else
  echo "setup-namespace: registering namespace $ns (retention $retention)"
  "$cli" operator namespace create $conn --namespace "$ns" --retention "$retention"
fi

# One --name and one --type per attribute (the CLI pairs them by position).
flags=""
for a in $attributes; do flags="$flags --name $a --type Keyword"; done
echo "setup-namespace: search attributes $attributes (Keyword)"
# A namespace just registered is "not found" until the frontend's namespace cache refreshes
# (seconds): try again until it answers.
waited=0
# shellcheck disable=SC2086 # the flags split on purpose
until out=$("$cli" operator search-attribute create $conn --namespace "$ns" $flags 2>&1); do
  if [ "$waited" -ge "${FERRY_HEALTH_WAIT_S:-120}" ]; then
    echo "$out" >&2
    echo "setup-namespace: search attributes not added after ${waited} s" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done
echo "$out"
