#!/usr/bin/env bash
# Runs once, when the postgres-data volume is first initialised (docker-entrypoint-initdb.d):
# the monitoring role of postgres-exporter. The tables and the tickwire_writer / tickwire_reader
# roles come from `tickwire db migrate` (the db-migrate service).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v exporter="$EXPORTER_DB_USER" -v exporter_pw="$EXPORTER_DB_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"exporter" LOGIN PASSWORD :'exporter_pw';
GRANT pg_monitor TO :"exporter";
GRANT CONNECT ON DATABASE :"db" TO :"exporter";
SQL
