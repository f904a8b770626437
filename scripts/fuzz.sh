#!/usr/bin/env bash
# Fuzzes every parser of untrusted input (fuzz/fuzz_targets/) for a bounded
# time each: SECONDS_PER_TARGET (default 60), or only the targets named as
# arguments. Needs a nightly toolchain and cargo-fuzz (installed if missing).
# A crash is copied into fuzz/regressions/TARGET/, which the end-to-end tests
# replay on every CI run (security::fuzz_regression_inputs_replay_cleanly):
# commit it with the fix. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${SECONDS_PER_TARGET:-60}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
failed=()
for t in "${targets[@]}"; do
  echo "== $t (${SECS}s)"
  mkdir -p "corpus/$t"
  cp -n "regressions/$t/"* "corpus/$t/" 2>/dev/null || true
  if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1; then
    failed+=("$t")
    for f in "artifacts/$t"/*; do
      [ -f "$f" ] && cp "$f" "regressions/$t/" && echo "kept $f as regressions/$t/$(basename "$f")"
    done
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs kept in fuzz/regressions/)" >&2
  exit 1
fi
echo "no crashes in ${#targets[@]} targets"
