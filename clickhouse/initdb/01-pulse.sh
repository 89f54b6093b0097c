#!/usr/bin/env bash
# Runs once, on the first start with an empty data volume (the image's initdb convention), against
# the temporary server the entrypoint starts for it. The schema files are the ones chDB runs in
# `make demo` and the tests; they use unqualified table names, so each one runs with --database.
# Kept executable: the entrypoint sources non-executable scripts, and `set -e` would leak into it.
set -euo pipefail

database="${CLICKHOUSE_DB:-pulse}"
# The notebook's own database: a notebook in the stack never writes into the processor's tables.
notebook_database="${PULSE_NOTEBOOK_DB:-pulse_notebook}"
schema_dir="${PULSE_SCHEMA_DIR:-/pulse/schema}"
initdb_dir="${PULSE_INITDB_DIR:-/docker-entrypoint-initdb.d}"
: "${PULSE_WRITER_USER:?}" "${PULSE_WRITER_PASSWORD:?}" "${PULSE_READER_USER:?}" "${PULSE_READER_PASSWORD:?}"

ch() { clickhouse-client --user "${CLICKHOUSE_USER}" --password "${CLICKHOUSE_PASSWORD}" "$@"; }

# Names go into SQL text (CREATE USER takes no query parameters): accept plain identifiers only.
for name in "$database" "$notebook_database" "$PULSE_WRITER_USER" "$PULSE_READER_USER"; do
  [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "pulse initdb: '$name' is not a plain identifier" >&2; exit 1; }
done
# Passwords never reach SQL text as such, only as hex digests, so no quoting can break out.
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

ch --query "CREATE DATABASE IF NOT EXISTS ${database}"
ch --query "CREATE DATABASE IF NOT EXISTS ${notebook_database}"
for file in "$schema_dir"/*.sql; do
  echo "pulse initdb: ${file}"
  ch --database "$database" --multiquery < "$file"
done

sed -e "s/__DATABASE__/${database}/g" -e "s/__NOTEBOOK_DATABASE__/${notebook_database}/g" \
    -e "s/__WRITER_USER__/${PULSE_WRITER_USER}/g" -e "s/__WRITER_SHA256__/$(sha256 "$PULSE_WRITER_PASSWORD")/g" \
    -e "s/__READER_USER__/${PULSE_READER_USER}/g" -e "s/__READER_SHA256__/$(sha256 "$PULSE_READER_PASSWORD")/g" \
    "$initdb_dir/users.sql.tmpl" | ch --multiquery

# The healthcheck waits for this, so no dependant connects to a server whose schema is half made.
touch "${PULSE_INITDB_MARKER:-/var/lib/clickhouse/.pulse-initdb-done}"
echo "pulse initdb: database ${database}, users ${PULSE_WRITER_USER} (writer), ${PULSE_READER_USER} (read-only)"
