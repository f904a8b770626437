#!/usr/bin/env python3
"""Fires N concurrent GETs at one cold URL through a cache and reports how
many reached the origin and the client latency percentiles.

usage: stampede.py CACHE_URL CLIENTS NAME ORIGIN_BASE
"""
import http.client
import sys
import threading
import time
import urllib.parse
import urllib.request


def main():
    url, clients, name, origin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    parts = urllib.parse.urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    barrier = threading.Barrier(clients)
    latencies, errors = [], []
    lock = threading.Lock()

    def one():
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.connect()
        barrier.wait()
        start = time.perf_counter()
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
            body = resp.read()
            ok = resp.status == 200 and body.startswith(b"waited")
        except Exception as e:  # noqa: BLE001 - any failure is reported
            ok, body = False, str(e).encode()
        elapsed = time.perf_counter() - start
        with lock:
            (latencies if ok else errors).append(elapsed if ok else body[:80])
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else float("nan")

    q = urllib.parse.quote(target, safe="")
    hits = urllib.request.urlopen(f"{origin}/__hits?path={q}", timeout=5).read().decode().strip()
    print(f"  {name:<8} origin requests {hits:>4}   ok {len(latencies):>4}/{clients}   "
          f"p50 {pct(0.50):7.1f} ms   p99 {pct(0.99):7.1f} ms   errors {len(errors)}")


if __name__ == "__main__":
    main()
