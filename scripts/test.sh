#!/usr/bin/env bash
# Installs what the tests need, then runs every check CI runs:
# formatting, clippy, unit tests, property tests and end-to-end tests
# (real origin servers and real fresco processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '==> %s\n' "$*"; }

stage "checking tools the tests need (curl, openssl, nats-server, nginx, chromium, chromedriver, varnish, redis, postgresql)"
need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
# The dashboard test drives a real headless browser over WebDriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || need_apt+=(varnish)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# fresco cdc's tests run a throwaway PostgreSQL cluster (initdb, pg_ctl, psql).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v psql >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    stage "installing ${need_apt[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing: ${need_apt[*]} (install them, or run as root)" >&2
    exit 1
  fi
fi

stage "cargo fmt --check"
cargo fmt --check
stage "cargo clippy (all targets, warnings are errors)"
cargo clippy --all-targets --quiet -- -D warnings
stage "building the tests"
cargo test --no-run --quiet
stage "unit and property tests"
cargo test --quiet --lib --bins
stage "integration tests: fuzz corpus regressions, then end-to-end (real fresco processes, origins, nats-server, nginx, varnish, redis, postgresql, chromium on loopback)"
cargo test --quiet --test '*'
stage "all checks passed"
