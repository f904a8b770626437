#!/usr/bin/env bash
# What the store really costs, measured through HTTP: a release fresco in
# front of nginx (or, without nginx, fresco's demo origin) is filled with N
# distinct 1 KiB objects by curl, then its resident memory is read from
# /proc and compared with what the store accounts for and with `memory`.
#
#   scripts/memory-bench.sh                       # N=200000 MEMORY=1GiB: no eviction, cost per object
#   N=400000 MEMORY=128MiB scripts/memory-bench.sh # budget full: resident memory against `memory`
#   FRESCO_BIN=path/to/fresco scripts/memory-bench.sh  # measure a binary without building
#
# Prints: objects stored, resident memory growth per stored object, the
# store's accounted bytes per object, and resident memory / memory.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
MEMORY=${MEMORY:-1GiB}
CLIENTS=${CLIENTS:-4}

# FRESCO_BIN: a binary already built (skips the build).
if [ -z "${FRESCO_BIN:-}" ]; then cargo build --release --quiet --bin fresco; fi
BIN=${FRESCO_BIN:-target/release/fresco}
. scripts/bench-lib.sh

metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

ORIGIN_PORT=$(free_port)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ -x "$NGINX" ]; then
  mkdir -p "$WORK/www" "$WORK/tmp"
  head -c 1024 /dev/urandom > "$WORK/www/1k.bin"
  chmod -R a+rX "$WORK/www"
  cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $WORK/www;
    location / { try_files /1k.bin =404; add_header Cache-Control "public, max-age=3600"; }
  }
}
EOF
  "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" & PIDS+=($!)
  ORIGIN="nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
  FILL_PATH="/objects/o"
else
  # The demo origin answers /bytes/N with N bytes (see src/demo.rs).
  $BIN origin --listen 127.0.0.1:$ORIGIN_PORT >/dev/null & PIDS+=($!)
  ORIGIN="fresco demo origin"
  FILL_PATH="/bytes/1024?o="
fi
wait_port "$ORIGIN_PORT"

PORT=$(free_port); ADMIN=$(free_port)
RUST_LOG=warn $BIN serve --origin "http://127.0.0.1:$ORIGIN_PORT" --listen "127.0.0.1:$PORT" \
  --admin "127.0.0.1:$ADMIN" --memory "$MEMORY" --data-dir "$WORK/data" >/dev/null & FRESCO=$!
PIDS+=($FRESCO)
wait_port "$PORT"
curl -s -o /dev/null "http://127.0.0.1:$PORT/warm-up"
BEFORE=$(rss_kib $FRESCO)

# N distinct keys, CLIENTS curl processes each walking its own range on one
# keep-alive connection.
START=$(date +%s)
per=$(( (N + CLIENTS - 1) / CLIENTS ))
fills=()
for c in $(seq 0 $((CLIENTS - 1))); do
  lo=$((c * per + 1)); hi=$(( (c + 1) * per < N ? (c + 1) * per : N ))
  [ "$lo" -le "$hi" ] || continue
  curl -s -o /dev/null "http://127.0.0.1:$PORT$FILL_PATH[$lo-$hi]" & fills+=($!)
done
for p in "${fills[@]}"; do wait "$p"; done
ELAPSED=$(( $(date +%s) - START ))

AFTER=$(rss_kib $FRESCO)
OBJECTS=$(metric fresco_store_objects)
BYTES=$(metric fresco_store_bytes)
CAPACITY=$(metric fresco_store_capacity_bytes)
EVICTIONS=$(metric fresco_store_evictions_total)
python3 - "$N" "$OBJECTS" "$BYTES" "$CAPACITY" "$EVICTIONS" "$BEFORE" "$AFTER" "$ELAPSED" "$ORIGIN" <<'EOF'
import sys
n, objects, acc, cap, evictions = (int(float(x)) for x in sys.argv[1:6])
before, after = int(sys.argv[6]) * 1024, int(sys.argv[7]) * 1024
elapsed, origin = sys.argv[8], sys.argv[9]
mib = lambda b: b / (1 << 20)
print(f"origin {origin}; {n} distinct 1 KiB objects requested in {elapsed} s")
print(f"memory (budget)              {mib(cap):10.1f} MiB")
print(f"objects stored               {objects:10d}   (evictions {evictions})")
print(f"store accounted bytes        {mib(acc):10.1f} MiB = {acc / max(objects, 1):.0f} B per object")
print(f"resident memory              {mib(after):10.1f} MiB (at start {mib(before):.1f} MiB)")
print(f"resident growth per object   {(after - before) / max(objects, 1):10.0f} B")
print(f"resident / accounted         {(after - before) / max(acc, 1):10.2f}")
print(f"resident / memory            {after / cap:10.2f}")
EOF
