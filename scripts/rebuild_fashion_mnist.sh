#!/usr/bin/env bash
# Rebuilds the shipped Fashion-MNIST model from scratch with the project's recipes, timing every step:
#
#   make fashion-mnist-model                        # or: bash scripts/rebuild_fashion_mnist.sh [RUNS_FOLDER]
#
# 1. tokenizer, phase 1: configs/tokenizer_fashion_mnist.yaml (L2 + codebook loss, paused at step 1500)
# 2. tokenizer, phase 2: configs/tokenizer_fashion_mnist_phase2.yaml (continues phase 1 with its losses)
# 3. token cache of the 60k training images
# 4. the transformer (configs/var_fashion_mnist.yaml) and, at the same time on the other core, the raster-AR
#    baseline of the README's comparison (same tokenizer, cache, size, steps and schedule)
# 5. the transformer's second learning-rate cycle (configs/var_fashion_mnist_phase2.yaml, from step 4's weights)
#    and the same for the baseline, side by side again; the shipped model is phase 2's
# Times on the 2-core machine that made the shipped model are in src/nextscale/assets/fashion_mnist_var/TRAINING.md.
# Every step resumes when the script is run again (a finished step trains nothing more).
# TOKENIZER_ARGS, TOKENIZE_ARGS and VAR_ARGS (key=value overrides, space-separated) are added to those steps;
# the tests use them to make every step tiny.
set -euo pipefail
RUNS=$(realpath -m "${1:-runs/fashion_mnist_rebuild}")
cd "$(dirname "$0")/.."  # the recipes' paths are relative to the repository
NEXTSCALE=${NEXTSCALE:-nextscale}
read -r -a tokenizer_args <<< "${TOKENIZER_ARGS:-}"
read -r -a tokenize_args <<< "${TOKENIZE_ARGS:-}"
read -r -a var_args <<< "${VAR_ARGS:-}"
mkdir -p "$RUNS"
times="$RUNS/times.txt"
: > "$times"

timed() {  # timed NAME COMMAND...: runs it, appends "NAME: M min S s" to $times
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*"
  "$@" &  # in the background and waited for, so that a SIGTERM reaches stop_steps at once
  wait $!
  echo "$name: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s" >> "$times"
}

# SIGTERM or Ctrl-C: pass it on to the running steps (the trainers save a checkpoint and stop) and wait for them;
# running the script again resumes every step. Steps are children of this shell, or of side_by_side's subshells.
stop_steps() {
  trap - TERM INT
  local children steps pid
  children=$(pgrep -P $$ || true)
  steps=$(for pid in $children; do pgrep -P "$pid" || true; done)
  kill -TERM $steps $children 2>/dev/null || true
  for pid in $steps $children; do
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
  done
  echo "stopped; run the same command again to resume" >&2
  exit 143
}
trap stop_steps TERM INT

timed "tokenizer phase 1" $NEXTSCALE train-tokenizer configs/tokenizer_fashion_mnist.yaml \
  "out_dir=$RUNS/tokenizer_phase1" "${tokenizer_args[@]}"
timed "tokenizer phase 2" $NEXTSCALE train-tokenizer configs/tokenizer_fashion_mnist_phase2.yaml \
  "init_from=$RUNS/tokenizer_phase1" "out_dir=$RUNS/tokenizer" "${tokenizer_args[@]}"
timed "token cache" $NEXTSCALE tokenize configs/var_fashion_mnist.yaml "tokenizer=$RUNS/tokenizer" \
  --out "$RUNS/cache" "${tokenize_args[@]}"
# One core each, as the shipped model and its baseline were trained.
side_by_side() {  # side_by_side NAME RECIPE VAR_FOLDER AR_FOLDER [STARTING_FROM]: the transformer and the baseline
  local name=$1 recipe=$2 var_out=$3 ar_out=$4 var_init=() ar_init=()
  if [ -n "${5:-}" ]; then  # a second cycle: each model goes on from its own first cycle
    var_init=("model.init_from=$RUNS/$5")
    ar_init=("model.init_from=$RUNS/$6")
  fi
  timed "transformer$name" $NEXTSCALE train "$recipe" "tokenizer=$RUNS/tokenizer" "token_cache=$RUNS/cache" \
    "out_dir=$RUNS/$var_out" "${var_init[@]}" "${var_args[@]}" &
  local var_pid=$!
  timed "raster-AR baseline$name" $NEXTSCALE train "$recipe" model.kind=raster_ar "tokenizer=$RUNS/tokenizer" \
    "token_cache=$RUNS/cache" "out_dir=$RUNS/$ar_out" "${ar_init[@]}" "${var_args[@]}" &
  local ar_pid=$!
  wait $var_pid
  wait $ar_pid
}
side_by_side "" configs/var_fashion_mnist.yaml var ar
side_by_side " phase 2" configs/var_fashion_mnist_phase2.yaml var_phase2 ar_phase2 var ar

echo
echo "== times (also in $times)"
cat "$times"
echo "the model: $RUNS/var_phase2/model (its tokenizer inside); the baseline: $RUNS/ar_phase2/model"
echo "compare them: python benchmarks/fmnist_var_vs_ar.py --var $RUNS/var_phase2/model --ar $RUNS/ar_phase2/model --cfg 3"
