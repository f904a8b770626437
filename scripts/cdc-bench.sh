#!/usr/bin/env bash
# fresco cdc benchmark on loopback: a throwaway PostgreSQL cluster, one edge
# node, the relay, and benches/cdc.rs driving them. Prints:
#   - commit-to-edge-fresh latency p50/p99 over COUNT single-row updates,
#     beside the peer in the same run: the application purging the page
#     itself through the admin API right after its commit;
#   - the rows/s the relay sustains for one ROWS-row transaction and for
#     ROWS one-row transactions.
#
#   scripts/cdc-bench.sh                   # COUNT=2000 (1000 each way), ROWS=100000
#   COUNT=400 ROWS=20000 scripts/cdc-bench.sh
#
# Needs PostgreSQL (Debian's `postgresql`); as root the script installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-2000}
ROWS=${ROWS:-100000}
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "PostgreSQL is required (apt-get install postgresql)"; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

cargo build --release --quiet
cargo bench --bench cdc --no-run --quiet 2>/dev/null
BIN=target/release/fresco
WORK=$(mktemp -d)
chown postgres:postgres "$WORK" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$PGBIN/pg_ctl -D $WORK/data stop -m immediate" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PGPORT=$(port)
as_pg "$PGBIN/initdb -D $WORK/data -A trust -U postgres" >/dev/null
as_pg "$PGBIN/pg_ctl -D $WORK/data -l $WORK/pg.log -w -o '-p $PGPORT -k $WORK -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4' start" >/dev/null
psql() { command psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -X -q -v ON_ERROR_STOP=1 "$@"; }
half=$(( (COUNT + 1) / 2 ))
psql -c "CREATE TABLE p (id int PRIMARY KEY, v bigint); CREATE TABLE q (id int PRIMARY KEY, v bigint);
         CREATE TABLE bulk (id int PRIMARY KEY, v bigint);
         INSERT INTO p SELECT g, 0 FROM generate_series(1, $half) g;
         INSERT INTO q SELECT g, 0 FROM generate_series(1, $half) g;
         INSERT INTO bulk SELECT g, 0 FROM generate_series(1, $ROWS) g;"
printf '[tables]\np = ["p-{id}"]\nbulk = ["bulk-{id}"]\n' > "$WORK/mapping.toml"

ORIGIN=127.0.0.1:$(port)
mkdir -p "$WORK/node"
# The relay and the purging "app" each get a token whose rate limit is not
# what is measured (the defaults, 50/s with bursts of 200, would be).
token_table() {
  local out secret
  out=$($BIN token --name "$1")
  secret=$(printf '%s\n' "$out" | sed -n 's/^secret: //p')
  printf '%s\n' "$out" | grep -E '^(\[\[token\]\]|name|secret_sha256)' >> "$WORK/node.toml"
  printf 'scopes = ["all"]\nrate = 100000.0\nburst = 100000.0\n' >> "$WORK/node.toml"
  echo "$secret"
}
: > "$WORK/node.toml"
RELAY_TOKEN=$(token_table relay)
TOKEN=$(token_table app)
$BIN serve --config "$WORK/node.toml" --origin "http://$ORIGIN" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
  --data-dir "$WORK/node" > "$WORK/node.out" 2> "$WORK/node.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^fresco ready' "$WORK/node.out" 2>/dev/null && break; sleep 0.1; done
EDGE=http://$(grep -o 'data=[^ ]*' "$WORK/node.out" | cut -d= -f2)
ADMIN=http://$(grep -o 'admin=[^ ]*' "$WORK/node.out" | cut -d= -f2)

$BIN cdc --postgres "postgres://postgres@127.0.0.1:$PGPORT/postgres" --mapping "$WORK/mapping.toml" \
  --admin "$ADMIN" --token "$RELAY_TOKEN" --metrics 127.0.0.1:0 > "$WORK/cdc.out" 2> "$WORK/cdc.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^fresco cdc ready' "$WORK/cdc.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^fresco ready' "$WORK/node.out" || { cat "$WORK/node.err"; exit 1; }
grep -q '^fresco cdc ready' "$WORK/cdc.out" || { cat "$WORK/cdc.err"; exit 1; }
METRICS=http://$(grep -o 'metrics=[^ ]*' "$WORK/cdc.out" | cut -d= -f2)

echo "== latency: $COUNT single-row updates (half through the relay, half purged by the app)"
cargo bench --bench cdc --quiet -- latency "$ORIGIN" "$EDGE" "$ADMIN" "$TOKEN" "$PGPORT" "$COUNT"
echo "== throughput: $ROWS rows"
cargo bench --bench cdc --quiet -- throughput "$METRICS" "$PGPORT" "$ROWS"
