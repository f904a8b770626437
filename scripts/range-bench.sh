#!/usr/bin/env bash
# Bytes fetched from the origin for N random 100-byte ranges of a large
# object (issue 10), through fresco (slices of SLICE) and, in the same run
# and against the same file, through nginx proxy_cache with its slice
# module at the same slice size. The origin is nginx serving a sparse file;
# its access logs count the body bytes it sent to each cache.
#
#   scripts/range-bench.sh                        # N=1000, a 1 GiB object, 1 MiB slices
#   N=200 SIZE_MIB=256 scripts/range-bench.sh
#   FRESCO_BIN=target/release/fresco scripts/range-bench.sh
#
# Prints, for each cache: origin requests, bytes the origin sent, and the
# target (at most one slice per range: SLICE x N).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
SIZE_MIB=${SIZE_MIB:-1024}
SLICE_MIB=${SLICE_MIB:-1}
MEMORY=${MEMORY:-256MiB}

if [ -z "${FRESCO_BIN:-}" ]; then cargo build --quiet --bin fresco; fi
BIN=${FRESCO_BIN:-target/debug/fresco}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is needed (apt-get install nginx-light)"; exit 1; }
WAIT_PORT_TENTHS=200
. scripts/bench-lib.sh


SIZE=$((SIZE_MIB * 1024 * 1024))
mkdir -p "$WORK/www" "$WORK/tmp" "$WORK/cache"
truncate -s "$SIZE" "$WORK/www/object.bin"
chmod -R a+rX "$WORK/www"

FOR_FRESCO=$(free_port); FOR_NGINX=$(free_port); NGINX_CACHE=$(free_port)
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  log_format sent '\$body_bytes_sent';
  keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  proxy_cache_path $WORK/cache levels=1:2 keys_zone=slices:10m max_size=8g inactive=1h use_temp_path=off;
  # The origin, once for each cache, so each has its own access log.
  server {
    listen 127.0.0.1:$FOR_FRESCO; root $WORK/www; access_log $WORK/origin-fresco.log sent;
    location / { add_header Cache-Control "max-age=3600"; }
  }
  server {
    listen 127.0.0.1:$FOR_NGINX; root $WORK/www; access_log $WORK/origin-nginx.log sent;
    location / { add_header Cache-Control "max-age=3600"; }
  }
  # The peer: nginx proxy_cache with the slice module.
  server {
    listen 127.0.0.1:$NGINX_CACHE; access_log off;
    location / {
      slice ${SLICE_MIB}m;
      proxy_cache slices;
      proxy_cache_key \$uri\$slice_range;
      proxy_set_header Range \$slice_range;
      proxy_cache_valid 200 206 1h;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://127.0.0.1:$FOR_NGINX;
    }
  }
}
EOF
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf" & PIDS+=($!)
FRESCO_DATA=$(free_port); FRESCO_ADMIN=$(free_port)
"$BIN" serve --origin "http://127.0.0.1:$FOR_FRESCO" --listen "127.0.0.1:$FRESCO_DATA" --admin "127.0.0.1:$FRESCO_ADMIN" \
  --data-dir "$WORK/fresco" --memory "$MEMORY" --slice-size "${SLICE_MIB}MiB" > "$WORK/fresco.log" 2>&1 & PIDS+=($!)
wait_port "$FOR_FRESCO"; wait_port "$NGINX_CACHE"; wait_port "$FRESCO_DATA"

# The same N random ranges for both, as one curl run each (keep-alive).
python3 - "$N" "$SIZE" > "$WORK/ranges" <<'EOF'
import random, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(10)
for _ in range(n):
    a = rng.randrange(0, size - 100)
    print(f"{a}-{a + 99}")
EOF

run() { # port -> count of 206 answers with 100 bytes
  local first=1
  while read -r r; do
    [ "$first" = 1 ] || echo next
    first=0
    printf 'url = "http://127.0.0.1:%s/object.bin"\nrange = "%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code} %%{size_download}\\n"\n' "$1" "$r"
  done < "$WORK/ranges" > "$WORK/curl-$1.cfg"
  curl -s -K "$WORK/curl-$1.cfg" | awk '$1 == 206 && $2 == 100 { ok++ } END { print ok + 0 }'
}
report() { # name, log, good answers
  awk -v name="$1" -v good="$3" -v n="$N" -v slice="$((SLICE_MIB * 1024 * 1024))" '
    { sent += $1; requests++ }
    END {
      printf "%-26s %4d/%d answers 206 with 100 bytes; origin: %5d requests, %12d bytes (%7.1f MiB); target <= %d MiB: %s\n",
        name, good, n, requests, sent, sent / 1048576, slice * n / 1048576, (sent <= slice * n ? "met" : "MISSED")
    }' "$2"
}
echo "range-bench: $N random 100-byte ranges of a $SIZE_MIB MiB object, ${SLICE_MIB} MiB slices (fresco memory $MEMORY)"
good=$(run "$FRESCO_DATA"); report "fresco ($(basename "$BIN"))" "$WORK/origin-fresco.log" "$good"
good=$(run "$NGINX_CACHE"); report "nginx proxy_cache + slice" "$WORK/origin-nginx.log" "$good"
