#!/usr/bin/env bash
# The disk tier, measured through HTTP with a release build (issue 10):
#
#  1. disk-hit throughput for 100 KiB objects: Fresco with a small memory
#     tier (so hits are read from the disk tier) beside nginx proxy_cache on
#     disk, the same origin (nginx serving a static file) behind both, the
#     same random keys, driven alternately by wrk in one run;
#  2. restart: MANY small objects on disk, then the time from start to the
#     ready line (and the recovery time the node logs), after a clean stop
#     and after SIGKILL, and the resident memory of the disk index per
#     object (node restarted with an empty memory tier, compared with a node
#     whose disk tier is empty).
#
#   scripts/disk-bench.sh                       # KEYS=2000 MANY=1000000
#   MANY=200000 DURATION=5 scripts/disk-bench.sh
#   ONLY=restart scripts/disk-bench.sh          # sections: hits restart
#   FRESCO_BIN=path/to/fresco scripts/disk-bench.sh   # skip the build
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-32}
KEYS=${KEYS:-2000}
MANY=${MANY:-1000000}
CLIENTS=${CLIENTS:-4}
# The cache key has the request's host: a fixed one, so that a node
# restarted on another port finds its objects.
HOST=bench.example
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

if [ "$(id -u)" = 0 ]; then
  missing=()
  for pkg in wrk nginx; do command -v $pkg >/dev/null 2>&1 || [ -x /usr/sbin/$pkg ] || missing+=($pkg); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || true
  fi
fi
export PATH="$PATH:/usr/sbin"
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }
command -v nginx >/dev/null || { echo "nginx is required (apt-get install nginx-light)"; exit 1; }

if [ -z "${FRESCO_BIN:-}" ]; then cargo build --release --quiet --bin fresco; fi
BIN=${FRESCO_BIN:-target/release/fresco}
WAIT_PORT_TENTHS=600
. scripts/bench-lib.sh

metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
wait_metric() { # admin-port metric at-least limit-seconds
  for _ in $(seq 1 $(($4 * 10))); do
    v=$(metric "$1" "$2"); [ -n "$v" ] && python3 -c "import sys; sys.exit(0 if float('$v') >= $3 else 1)" && return 0
    sleep 0.1
  done
  echo "$2 did not reach $3 within $4 s (last: ${v:-none})"; exit 1
}

# The origin: nginx serving one file under every path, fresh for an hour.
ORIGIN_PORT=$(free_port)
mkdir -p "$WORK/www" "$WORK/tmp" "$WORK/cache"
head -c 102400 /dev/urandom > "$WORK/www/100k.bin"
head -c 1024 /dev/urandom > "$WORK/www/1k.bin"
chmod -R a+rX "$WORK/www"
CACHE_PORT=$(free_port)
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  proxy_cache_path $WORK/cache levels=1:2 keys_zone=disk:64m max_size=1g inactive=1h;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $WORK/www;
    location /big/ { try_files /100k.bin =404; add_header Cache-Control "public, max-age=3600"; }
    location /small/ { try_files /1k.bin =404; add_header Cache-Control "public, max-age=3600"; }
  }
  # The peer: nginx proxy_cache on disk in front of the same origin.
  server {
    listen 127.0.0.1:$CACHE_PORT;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN_PORT; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache disk; proxy_cache_valid 200 1h;
    }
  }
}
EOF
taskset -c 0 nginx -p "$WORK" -c "$WORK/nginx.conf" & PIDS+=($!)
wait_port "$ORIGIN_PORT"; wait_port "$CACHE_PORT"

start_fresco() { # name memory disk -> sets PORT ADMIN PID; logs into $WORK/name.log
  PORT=$(free_port); ADMIN=$(free_port)
  local started; started=$(date +%s%N)
  RUST_LOG=info taskset -c 0 $BIN serve --origin "http://127.0.0.1:$ORIGIN_PORT" --listen "127.0.0.1:$PORT" \
    --admin "127.0.0.1:$ADMIN" --memory "$2" --disk "$3" --data-dir "$WORK/$1" \
    >"$WORK/$1.out" 2>>"$WORK/$1.log" & PID=$!
  PIDS+=($PID)
  for _ in $(seq 1 6000); do grep -q "^fresco ready" "$WORK/$1.out" 2>/dev/null && break; sleep 0.01; done
  READY_MS=$(( ($(date +%s%N) - started) / 1000000 ))
}

if want hits; then
  echo "== disk hits, 100 KiB objects: $KEYS keys at random, wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS alternating rounds =="
  start_fresco hits 8MiB 1GiB
  FRESCO_URL="http://127.0.0.1:$PORT"; FRESCO_ADMIN=$ADMIN
  # Twice each: the second request admits the object to disk. Writes
  # queued past 64 MiB are skipped, so a few more passes write the rest.
  curl -s -o /dev/null "$FRESCO_URL/big/o[1-$KEYS]"
  for pass in 1 2 3 4; do
    curl -s -o /dev/null "$FRESCO_URL/big/o[1-$KEYS]"
    sleep 2
    [ "$(metric "$FRESCO_ADMIN" fresco_disk_objects)" -ge "$KEYS" ] && break
  done
  echo "  on disk: $(metric "$FRESCO_ADMIN" fresco_disk_objects) of $KEYS objects"
  curl -s -o /dev/null "http://127.0.0.1:$CACHE_PORT/big/o[1-$KEYS]"
  cat > "$WORK/random.lua" <<EOF
math.randomseed(os.time())
request = function() return wrk.format("GET", "/big/o" .. math.random(1, $KEYS)) end
EOF
  declare -A RPS
  hits_before=$(metric "$FRESCO_ADMIN" fresco_disk_hits_total)
  for round in $(seq 1 "$ROUNDS"); do
    for t in "fresco=$FRESCO_URL" "nginx=http://127.0.0.1:$CACHE_PORT"; do
      name=${t%%=*}; url=${t#*=}
      out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$WORK/random.lua" "$url")
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      tput=$(echo "$out" | awk '/Transfer\/sec/ {print $2}')
      errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
      printf "  round %d %-7s %9.0f req/s  %s/s %s\n" "$round" "$name" "$rps" "$tput" "$errors"
      RPS[$name]=$(echo "${RPS[$name]:-0} + $rps" | bc -l)
    done
  done
  hits_after=$(metric "$FRESCO_ADMIN" fresco_disk_hits_total)
  fresco=$(echo "${RPS[fresco]} / $ROUNDS" | bc -l); nginx=$(echo "${RPS[nginx]} / $ROUNDS" | bc -l)
  printf "  mean: fresco %.0f req/s, nginx proxy_cache %.0f req/s, fresco/nginx %.2f\n" "$fresco" "$nginx" "$(echo "$fresco / $nginx" | bc -l)"
  printf "  fresco answers read from its disk tier during the runs: %.0f\n" "$(echo "$hits_after - $hits_before" | bc -l)"
  kill "$PID"; wait "$PID" 2>/dev/null || true
fi

if want restart; then
  echo "== restart with $MANY objects of 1 KiB on disk =="
  start_fresco empty 64MiB 4GiB
  EMPTY_RSS=$(rss_kib "$PID")
  kill "$PID"; wait "$PID" 2>/dev/null || true

  # Filled with a memory tier that holds them all: each object's second
  # request is a memory hit, which writes it to disk.
  start_fresco many 1GiB 4GiB
  started=$(date +%s)
  per=$(( (MANY + CLIENTS - 1) / CLIENTS ))
  for pass in 1 2 3 4; do
    [ "$pass" -gt 2 ] && [ "$(metric "$ADMIN" fresco_disk_objects)" -ge "$MANY" ] && break
    fills=()
    for c in $(seq 0 $((CLIENTS - 1))); do
      lo=$((c * per + 1)); hi=$(( (c + 1) * per < MANY ? (c + 1) * per : MANY ))
      [ "$lo" -le "$hi" ] || continue
      taskset -c 1 curl -s -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$PORT/small/o[$lo-$hi]" & fills+=($!)
    done
    for p in "${fills[@]}"; do wait "$p"; done
  done
  sleep 2
  echo "  filled in $(( $(date +%s) - started )) s: $(metric "$ADMIN" fresco_disk_objects) objects, $(metric "$ADMIN" fresco_disk_bytes) bytes on disk"
  kill "$PID"; wait "$PID" 2>/dev/null || true

  recovery() { grep "disk tier recovered" "$WORK/many.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'objects=[0-9]*\|recovery_ms=[0-9]*' | tr '\n' ' '; }
  start_fresco many 64MiB 4GiB
  first=$(curl -s -o /dev/null -H "Host: $HOST" -w '%{http_code} %header{cache-status}' "http://127.0.0.1:$PORT/small/o1")
  echo "  after a clean stop: ready in $READY_MS ms ($(recovery)); first request: $first"
  RSS=$(rss_kib "$PID"); KEPT=$(metric "$ADMIN" fresco_disk_objects)
  python3 -c "print(f'  disk index: {($RSS - $EMPTY_RSS) * 1024 / $KEPT:.0f} B resident per object on disk ({($RSS - $EMPTY_RSS) / 1024:.0f} MiB for $KEPT objects over a node with an empty disk tier)')"
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true
  start_fresco many 64MiB 4GiB
  first=$(curl -s -o /dev/null -H "Host: $HOST" -w '%{http_code} %header{cache-status}' "http://127.0.0.1:$PORT/small/o$MANY")
  echo "  after SIGKILL: ready in $READY_MS ms ($(recovery)); first request: $first"
  kill "$PID"; wait "$PID" 2>/dev/null || true
fi
