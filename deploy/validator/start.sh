#!/bin/sh
# Wait for PostgreSQL and Redis to accept connections, then start the given command.
# The schema is not migrated here: the one-shot `migrate` service (`gauntlet validator migrate`)
# does that once before anything else starts, and the validator runs with
# GAUNTLET_MIGRATE_ON_START=false (it checks the schema is at head instead of migrating).
set -eu
python - <<'PY'
import os, socket, sys, time, urllib.parse
deadline = time.time() + 120
for var in ("GAUNTLET_DATABASE_URL", "GAUNTLET_REDIS_URL"):
    url = urllib.parse.urlsplit(os.environ.get(var, "").replace("+psycopg", ""))
    if not url.hostname:
        continue
    while True:
        try:
            socket.create_connection((url.hostname, url.port or 0), timeout=2).close()
            break
        except OSError as exc:
            if time.time() > deadline:
                sys.exit(f"{var}: {url.hostname}:{url.port} unreachable: {exc}")
            time.sleep(1)
PY
exec "$@"
