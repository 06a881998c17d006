#!/bin/sh
# Wait for PostgreSQL and Redis, bring the schema to head, then start the given command.
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
python -c "import os; from validator.db.session import migrate; migrate(os.environ['GAUNTLET_DATABASE_URL'])"
exec "$@"
