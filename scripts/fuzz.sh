#!/usr/bin/env bash
# Fuzzes every parser of untrusted input (fuzz/fuzz_targets/*.rs) with
# cargo-fuzz (libFuzzer), each for FUZZ_SECONDS (default 30). Not part of
# scripts/test.sh: run it by hand or on a schedule.
#
#   scripts/fuzz.sh                 # every target, 30 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh range admin_api
#
# Needs a nightly toolchain (cargo fuzz builds with sanitizers); installs
# cargo-fuzz when missing. New inputs the fuzzer finds go to a scratch
# directory, not the repository; the seeds in fuzz/corpus/<target>/ are read
# only. A crash is saved under fuzz/artifacts/<target>/ and stops the run:
# once it is fixed, copy the input into fuzz/corpus/<target>/, where
# `cargo test` (tests/fuzz_corpus.rs) runs it on every CI run without nightly.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-30}"
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)." >&2
  echo "Without it, cargo test still runs every target over fuzz/corpus/ (tests/fuzz_corpus.rs)." >&2
  exit 2
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir .)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "== $t (${seconds}s)"
  if ! cargo +nightly fuzz run --fuzz-dir . "$t" "$scratch/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"$scratch/$t.log"; then
    failed+=("$t")
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$scratch/$t.log" | head -20 >&2 || true
  fi
  grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$scratch/$t.log" | tr '\n' ' '
  echo
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
echo "no crash in ${#targets[@]} targets"
