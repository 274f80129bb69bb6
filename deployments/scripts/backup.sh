#!/usr/bin/env bash
# Dump the gateway's Postgres database (DATABASE_URL) to BACKUP_DIR/llm-gateway-<UTC time>.sql.gz
# and delete dumps older than BACKUP_RETENTION_DAYS. For cron, e.g. daily at 03:15:
#   15 3 * * * DATABASE_URL=... /opt/llm-gateway/deployments/scripts/backup.sh
# With Supabase, use the direct or session-pooler connection string (port 5432), not the
# transaction pooler (6543): pg_dump needs a session.
set -euo pipefail

: "${DATABASE_URL:?DATABASE_URL is not set}"
BACKUP_DIR=${BACKUP_DIR:-/var/backups/llm-gateway}
RETENTION_DAYS=${BACKUP_RETENTION_DAYS:-14}

# Keep the password out of the process list: move it from the URL to PGPASSWORD.
url=$DATABASE_URL
if [[ $url =~ ^(postgres(ql)?://)([^:@/]+):([^@/]*)@(.*)$ ]]; then
    encoded=${BASH_REMATCH[4]}
    PGPASSWORD=$(printf '%b' "${encoded//%/\\x}")
    export PGPASSWORD
    url="${BASH_REMATCH[1]}${BASH_REMATCH[3]}@${BASH_REMATCH[5]}"
fi

umask 077
mkdir -p "$BACKUP_DIR"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$BACKUP_DIR/llm-gateway-$stamp.sql.gz"
partial="$out.partial"
trap 'rm -f "$partial"' EXIT

pg_dump --no-owner --no-privileges --dbname="$url" | gzip -9 >"$partial"
mv "$partial" "$out"
echo "backup written: $out ($(du -h "$out" | cut -f1))"

find "$BACKUP_DIR" -maxdepth 1 -name 'llm-gateway-*.sql.gz' -type f -mtime +"$RETENTION_DAYS" \
    -print -delete
