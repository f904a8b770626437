#!/usr/bin/env bash
# Runs the randomized model test (tests/e2e/model.rs) for many more cases
# than CI does, seed after seed, until ROUNDS rounds pass or one fails.
#
#   ROUNDS=10 CASES=500 CLUSTER_CASES=200 ./scripts/soak.sh
#   RELEASE=1 ./scripts/soak.sh          # fresco and the test in release (faster, more cases per minute)
#   SEED=123 ROUNDS=1 ./scripts/soak.sh  # replay one seed
#   IGNORE='Set-Cookie|X-Secret' ./scripts/soak.sh   # skip invariants whose bug is known, to look for others
#   WIPES=0 ./scripts/soak.sh            # leave out the bus losing its storage (the stream recreated)
#
# Each round prints its seed; a failure prints the broken invariant, the
# response and the shortest history found, and the script stops there
# (exit 1). Node logs of a failed round stay under $TMPDIR/fresco-model/.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
CASES=${CASES:-500}
CLUSTER_CASES=${CLUSTER_CASES:-150}
STEPS=${STEPS:-40}
SHRINK_SECS=${SHRINK_SECS:-300}
profile=()
[ "${RELEASE:-0}" = 1 ] && profile=(--release)
command -v nats-server >/dev/null 2>&1 || { echo "nats-server is needed (scripts/test.sh installs it)" >&2; exit 1; }

for round in $(seq 1 "$ROUNDS"); do
  seed=${SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
  echo "== round $round/$ROUNDS seed $seed"
  FRESCO_MODEL_SEED=$seed FRESCO_MODEL_STEPS=$STEPS FRESCO_MODEL_SHRINK_SECS=$SHRINK_SECS \
    FRESCO_MODEL_IGNORE=${IGNORE:-} FRESCO_MODEL_CASES=$CASES \
    cargo test "${profile[@]}" --quiet --test e2e model_single_node -- --nocapture
  FRESCO_MODEL_SEED=$seed FRESCO_MODEL_STEPS=$STEPS FRESCO_MODEL_SHRINK_SECS=$SHRINK_SECS \
    FRESCO_MODEL_IGNORE=${IGNORE:-} FRESCO_MODEL_CASES=$CLUSTER_CASES FRESCO_MODEL_WIPES=${WIPES:-1} \
    cargo test "${profile[@]}" --quiet --test e2e model_three_nodes_on_jetstream -- --nocapture
done
echo "soak: $ROUNDS rounds passed"
