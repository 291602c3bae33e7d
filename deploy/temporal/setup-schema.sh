#!/bin/sh
# Creates Temporal's two PostgreSQL databases and brings their schemas to the version the
# tool ships (the schema embedded in temporal-sql-tool, so it always matches the server
# built from the same release). Every step is idempotent: run it before each start.
# Run by docker-compose (temporal-schema, admin-tools image) and by `ferry cluster up`.
#
# Environment (read by temporal-sql-tool itself): SQL_HOST, SQL_PORT, SQL_USER, SQL_PASSWORD.
# Optional: TEMPORAL_SQL_TOOL (default: temporal-sql-tool on PATH),
#           FERRY_TEMPORAL_DB (temporal), FERRY_TEMPORAL_VISIBILITY_DB (temporal_visibility).
set -eu

tool=${TEMPORAL_SQL_TOOL:-temporal-sql-tool}
SQL_PLUGIN=postgres12
export SQL_PLUGIN

setup_db() {
  db=$1
  schema=$2
  echo "setup-schema: database $db (postgresql/v12/$schema)"
  "$tool" --db "$db" create-database --defaultdb postgres
  "$tool" --db "$db" setup-schema -v 0.0
  "$tool" --db "$db" update-schema --schema-name "postgresql/v12/$schema"
}

setup_db "${FERRY_TEMPORAL_DB:-temporal}" temporal
setup_db "${FERRY_TEMPORAL_VISIBILITY_DB:-temporal_visibility}" visibility
