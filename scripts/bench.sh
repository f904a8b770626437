#!/usr/bin/env bash
# Load benchmarks on loopback: Fresco beside Varnish, nginx proxy_cache and
# haproxy's cache, the same origin behind each, driven alternately by wrk in one
# run so drift between runs cancels out. Prints req/s, p50/p99 and ratios.
#
#   scripts/bench.sh            # hot 1 KiB hits + stampede
#   DURATION=20 scripts/bench.sh
#   ONLY="cluster invalidation" scripts/bench.sh   # sections: hot stampede swr invalidation cluster
#
# Peers come from Debian (varnish, nginx, haproxy, wrk); as root the script installs
# what is missing, otherwise it skips the peers it cannot find.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
PURGE_OBJECTS=${PURGE_OBJECTS:-1000000}
RECORDS=${RECORDS:-100000}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-2}
STAMPEDE_CLIENTS=${STAMPEDE_CLIENTS:-500}
STAMPEDE_DELAY_MS=${STAMPEDE_DELAY_MS:-200}
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

if [ "$(id -u)" = 0 ]; then
  missing=()
  for pkg in wrk varnish nginx haproxy; do
    bin=$pkg; [ "$pkg" = varnish ] && bin=varnishd
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || true
  fi
fi
export PATH="$PATH:/usr/sbin"
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }

cargo build --release --quiet
BIN=target/release/fresco
. scripts/bench-lib.sh

# Servers on CPU 0, the load generator on CPU 1.
ORIGIN_PORT=$(free_port)
taskset -c 0 $BIN origin --listen 127.0.0.1:$ORIGIN_PORT >/dev/null & PIDS+=($!)
wait_port $ORIGIN_PORT

FRESCO_PORT=$(free_port); FRESCO_ADMIN=$(free_port)
RUST_LOG=warn taskset -c 0 $BIN serve --origin http://127.0.0.1:$ORIGIN_PORT --listen 127.0.0.1:$FRESCO_PORT \
  --admin 127.0.0.1:$FRESCO_ADMIN --memory 512MiB >/dev/null & PIDS+=($!)
wait_port $FRESCO_PORT
TARGETS=("fresco=http://127.0.0.1:$FRESCO_PORT")

if command -v varnishd >/dev/null; then
  VARNISH_PORT=$(free_port)
  printf 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "%s"; }\n' $ORIGIN_PORT > "$WORK/default.vcl"
  taskset -c 0 varnishd -F -a 127.0.0.1:$VARNISH_PORT -f "$WORK/default.vcl" -s malloc,512m -n "$WORK/varnish" -T none \
    -p thread_pool_min=50 >/dev/null 2>&1 & PIDS+=($!)
  wait_port $VARNISH_PORT
  TARGETS+=("varnish=http://127.0.0.1:$VARNISH_PORT")
else
  echo "varnish not installed: Fresco alone"
fi

NGINX_PORT=""
if command -v nginx >/dev/null; then
  NGINX_PORT=$(free_port)
  mkdir -p "$WORK/nginx/cache"
  cat > "$WORK/nginx/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;
  proxy_cache_path $WORK/nginx/cache keys_zone=c:64m max_size=512m;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN_PORT; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache c; proxy_cache_lock on; proxy_cache_lock_timeout 10s; proxy_cache_valid 200 1h;
    }
  }
}
NGX
  taskset -c 0 nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >/dev/null 2>&1 & PIDS+=($!)
  wait_port $NGINX_PORT
  TARGETS+=("nginx=http://127.0.0.1:$NGINX_PORT")
fi

if command -v haproxy >/dev/null; then
  HAPROXY_PORT=$(free_port)
  cat > "$WORK/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 20000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
cache c
  total-max-size 512
  max-object-size 1048576
  max-age 3600
frontend f
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend b
backend b
  http-request cache-use c
  http-response cache-store c
  server origin 127.0.0.1:$ORIGIN_PORT
HAP
  taskset -c 0 haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 & PIDS+=($!)
  wait_port $HAPROXY_PORT
  TARGETS+=("haproxy=http://127.0.0.1:$HAPROXY_PORT")
fi

# wrk --latency prints "50% 1.23ms" lines; convert to microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print v}'; }

declare -A RPS P50 P99 N
if want hot; then
echo "== hot 1 KiB hits: wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS alternating rounds =="
for t in "${TARGETS[@]}"; do curl -s -o /dev/null "${t#*=}/bytes/1024"; curl -s -o /dev/null "${t#*=}/bytes/1024"; done
for round in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    name=${t%%=*}; url=${t#*=}
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url/bytes/1024")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}' | to_us)
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
    printf "  round %d %-8s %10.0f req/s  p50 %7.0f us  p99 %7.0f us\n" "$round" "$name" "$rps" "$p50" "$p99"
    RPS[$name]=$(echo "${RPS[$name]:-0} + $rps" | bc -l); P50[$name]=$(echo "${P50[$name]:-0} + $p50" | bc -l)
    P99[$name]=$(echo "${P99[$name]:-0} + $p99" | bc -l); N[$name]=$(( ${N[$name]:-0} + 1 ))
  done
done
echo "-- mean over rounds --"
for t in "${TARGETS[@]}"; do
  name=${t%%=*}
  printf "  %-8s %10.0f req/s  p50 %7.0f us  p99 %7.0f us\n" "$name" \
    "$(echo "${RPS[$name]} / ${N[$name]}" | bc -l)" "$(echo "${P50[$name]} / ${N[$name]}" | bc -l)" "$(echo "${P99[$name]} / ${N[$name]}" | bc -l)"
done
for peer in varnish nginx haproxy; do
  if [ -n "${RPS[$peer]:-}" ]; then
    printf "  fresco/%-8s throughput x%.2f, p99 x%.2f (target: >= 1.00 and <= 1.00)\n" "$peer" \
      "$(echo "${RPS[fresco]} / ${RPS[$peer]}" | bc -l)" "$(echo "${P99[fresco]} / ${P99[$peer]}" | bc -l)"
  fi
done

fi
cargo bench --quiet --bench stampede --no-run 2>/dev/null
burst() { taskset -c 1 cargo bench --quiet --bench stampede -- "$@"; }

if want stampede; then
echo
echo "== stampede: cold URL, origin delay ${STAMPEDE_DELAY_MS} ms, $STAMPEDE_CLIENTS concurrent clients =="
for t in "${TARGETS[@]}"; do
  name=${t%%=*}; url=${t#*=}
  # A fresh path per target so every one starts cold.
  burst "$name" "$url/delay/${STAMPEDE_DELAY_MS}?cold=$name-$RANDOM$RANDOM" "$STAMPEDE_CLIENTS" "http://127.0.0.1:$ORIGIN_PORT"
done
printf "  targets: exactly 1 origin request; client p99 <= origin delay + 20 ms\n"
fi

if want swr; then
echo
echo "== stale-while-revalidate: expired object (max-age=2, swr=60, origin delay ${STAMPEDE_DELAY_MS} ms) vs hot object, $STAMPEDE_CLIENTS clients =="
url="http://127.0.0.1:$FRESCO_PORT/swr/${STAMPEDE_DELAY_MS}?k=$RANDOM$RANDOM"
curl -s -o /dev/null "$url"; sleep 3
burst "stale" "$url" "$STAMPEDE_CLIENTS" "http://127.0.0.1:$ORIGIN_PORT"
sleep 0.5
burst "hot" "$url" "$STAMPEDE_CLIENTS" "http://127.0.0.1:$ORIGIN_PORT"
printf "  target: stale p99 within 2x the hot p99; origin requests = 2 (the fill and one revalidation)\n"
fi

inv() { taskset -c 1 cargo bench --quiet --bench invalidation -- "$@"; }
if want invalidation; then
echo
echo "== invalidation: purge latency, and hot hits with $RECORDS selector records =="
INV_PORT=$(free_port); INV_ADMIN=$(free_port)
# The generated local token is rate limited; the benchmark needs a token without a practical limit.
printf '[[token]]\nname = "bench"\nsecret = "bench-token-0123456789"\nscopes = ["all"]\nrate = 1000000\nburst = 1000000\n' > "$WORK/inv.toml"
RUST_LOG=warn taskset -c 0 $BIN serve --origin http://127.0.0.1:$ORIGIN_PORT --listen 127.0.0.1:$INV_PORT \
  --admin 127.0.0.1:$INV_ADMIN --memory 4GiB --data-dir "$WORK/inv" --sweep-interval 1h --config "$WORK/inv.toml" >/dev/null & PIDS+=($!)
wait_port $INV_ADMIN
TOKEN=bench-token-0123456789
curl -s -o /dev/null "http://127.0.0.1:$INV_PORT/bytes/1024"
hot() { taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$INV_PORT/bytes/1024" | awk '/Requests\/sec/ {print $2}'; }
idle_rps=$(hot)
inv records "http://127.0.0.1:$INV_ADMIN" "$TOKEN" "$RECORDS"
busy_rps=$(hot)

printf "  hot hits: %.0f req/s with 0 records, %.0f with %d records (x%.3f; target >= 0.90)\n" \
  "$idle_rps" "$busy_rps" "$RECORDS" "$(echo "$busy_rps / $idle_rps" | bc -l)"
inv latency "http://127.0.0.1:$INV_PORT" "http://127.0.0.1:$INV_ADMIN" "$TOKEN" "$PURGE_OBJECTS"
printf "  target: flat, under 5 ms, whatever the number of matching objects\n"
fi

want cluster || exit 0
echo
echo "== cluster on NATS JetStream: convergence and sustained invalidations =="
if ! command -v nats-server >/dev/null; then
  echo "  nats-server not installed: skipped (apt-get install nats-server)"
  exit 0
fi
NATS_PORT=$(free_port)
nats-server -js -sd "$WORK/nats" -a 127.0.0.1 -p $NATS_PORT >/dev/null 2>&1 & PIDS+=($!)
wait_port $NATS_PORT
printf '[[token]]\nname = "bench"\nsecret = "bench-token-0123456789"\nscopes = ["all"]\nrate = 1000000\nburst = 1000000\n' > "$WORK/cluster.toml"
for n in 3 5; do
  ADMINS=()
  HOT_PORT=""
  for i in $(seq 1 $n); do
    p=$(free_port); a=$(free_port)
    [ -z "$HOT_PORT" ] && HOT_PORT=$p
    RUST_LOG=warn taskset -c 0 $BIN serve --origin http://127.0.0.1:$ORIGIN_PORT --listen 127.0.0.1:$p --admin 127.0.0.1:$a \
      --bus nats://127.0.0.1:$NATS_PORT --node-id "bench$n-$i" --data-dir "$WORK/c$n-$i" --config "$WORK/cluster.toml" >/dev/null 2>&1 & PIDS+=($!)
    wait_port $a
    ADMINS+=("http://127.0.0.1:$a")
  done
  sleep 1
  list=$(IFS=,; echo "${ADMINS[*]}")
  echo "-- $n nodes --"
  inv convergence "$list" bench-token-0123456789 1000
  curl -s -o /dev/null "http://127.0.0.1:$HOT_PORT/bytes/1024"
  idle=$(taskset -c 1 wrk -t1 -c"$CONNS" -d5s "http://127.0.0.1:$HOT_PORT/bytes/1024" | awk '/Requests\/sec/ {print $2}')
  taskset -c 1 wrk -t1 -c"$CONNS" -d8s "http://127.0.0.1:$HOT_PORT/bytes/1024" > "$WORK/wrk-storm.txt" &
  wrk_pid=$!
  sleep 1
  inv storm "$list" bench-token-0123456789 20000
  wait $wrk_pid
  busy=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-storm.txt")
  printf "  hot hits on one node: %.0f req/s idle, %.0f during the storm (x%.2f; target >= 0.90)\n" "$idle" "$busy" "$(echo "$busy / $idle" | bc -l)"
done
printf "  targets: p99 under 20 ms; >= 10000 invalidations/s applied by the cluster\n"
