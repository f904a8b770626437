# Sourced by the benchmark scripts: a work directory removed at exit
# together with every process whose pid is added to PIDS, free loopback
# ports, waiting for a port to open, and a process's resident memory.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fresco-bench.XXXXXX")
# varnishd and nginx workers drop privileges: they must be able to read it.
chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT: up to WAIT_PORT_TENTHS tenths of a second (default 100).
wait_port() {
  for _ in $(seq 1 "${WAIT_PORT_TENTHS:-100}"); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened"; exit 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
