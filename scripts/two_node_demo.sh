#!/usr/bin/env bash
# A two-node torchrun launch simulated on one machine: two launchers, one per "node", each with one
# process, meet at a c10d rendezvous on 127.0.0.1 and train MARN (tiny preset) sharded over the two
# processes; the planner sees 2 nodes of 1 rank (LOCAL_WORLD_SIZE=1). The demo
#
#   1. trains a reference run to the end (both launchers),
#   2. starts a second run, SIGKILLs both launchers and their workers once it has a checkpoint,
#   3. restarts both launchers with the same command: they resume from the latest checkpoint,
#   4. checks that the resumed run's final evaluation equals the reference's (bit-identical).
#
#   bash scripts/two_node_demo.sh [OUT_DIR]      # default runs/two_node_demo; about 2-3 minutes on 2 cores
#
# Environment: PYTHON (default .venv/bin/python), STEPS (16), CHECKPOINT_EVERY (4), REFERENCE=0 to
# skip step 1 (and the comparison). On real nodes, run the same launcher command on each node with
# --rdzv-endpoint=<node 0's address>:<port> and an OUT_DIR on a file system both nodes see.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-runs/two_node_demo}
STEPS=${STEPS:-16}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-4}
REFERENCE=${REFERENCE:-1}
mkdir -p "$OUT"

free_port() { "$PY" -c "from marn_rec.training.loop import free_port; print(free_port())"; }

PIDS=()
# launch RUN_DIR PORT: both launchers, each in its own session (process group = its PID). torchrun
# starts each worker in a session of its own, so a kill of a "node" kills the launcher's group and
# the groups of its children: everything of that launch, and nothing else.
launch() {
  local run=$1 port=$2
  PIDS=()
  for node in 0 1; do
    setsid "$PY" -m torch.distributed.run \
      --nnodes=2 --nproc_per_node=1 \
      --rdzv-backend=c10d --rdzv-endpoint="127.0.0.1:$port" --rdzv-id="marn-$port" \
      --node-rank="$node" \
      examples/train_taobao_synthetic.py --preset tiny --batch-size 16 --steps "$STEPS" \
      --eval-every 8 --eval-batches 2 --checkpoint-every "$CHECKPOINT_EVERY" --no-progress \
      --out-dir "$run" >>"$run.node$node.log" 2>&1 &
    PIDS+=($!)
  done
}

wait_both() {
  local rc=0
  for pid in "${PIDS[@]}"; do wait "$pid" || rc=$?; done
  return $rc
}

children() {  # PIDs whose parent is $1 (from /proc, by id)
  local stat line rest
  for stat in /proc/[0-9]*/stat; do
    line=$(cat "$stat" 2>/dev/null) || continue
    rest=${line##*) }  # the fields after "pid (comm) ": state ppid ...
    read -r _ ppid _ <<<"$rest"
    [ "$ppid" = "$1" ] && echo "${line%% *}"
  done
  return 0
}

kill_both() {  # SIGKILL both "nodes" at once: launchers and workers
  local groups=() pid child
  for pid in "${PIDS[@]}"; do
    groups+=("$pid")
    for child in $(children "$pid"); do groups+=("$child"); done
  done
  for pid in "${groups[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  # the workers are not children of this shell: wait until they are gone
  for pid in "${groups[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
}
trap 'kill_both' INT TERM

last_eval() {  # the final evaluation record of a run's metrics.jsonl
  "$PY" - "$1/metrics.jsonl" <<'EOF'
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if r["split"] == "eval"]
print(json.dumps(evals[-1], sort_keys=True))
EOF
}

complete_checkpoint() {  # prints the latest complete checkpoint of a run, if any
  local c
  c=$(ls -d "$1"/checkpoints/step_*/COMPLETE 2>/dev/null | sort | tail -1)
  [ -n "$c" ] && dirname "$c"
  return 0
}

start=$(date +%s)
if [ "$REFERENCE" = 1 ]; then
  rm -rf "$OUT/reference" "$OUT"/reference.node*.log
  echo "1. reference run: two launchers (2 nodes x 1 process), $STEPS steps"
  launch "$OUT/reference" "$(free_port)"
  wait_both
fi

rm -rf "$OUT/killed" "$OUT"/killed.node*.log
echo "2. second run, killed (SIGKILL, both nodes) after its first checkpoint"
launch "$OUT/killed" "$(free_port)"
while [ -z "$(complete_checkpoint "$OUT/killed")" ]; do
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "a launcher ended before the kill: see $OUT/killed.node*.log"; kill_both; exit 1; }
  done
  sleep 0.2
done
kill_both
echo "   killed at $(basename "$(complete_checkpoint "$OUT/killed")") (latest complete checkpoint)"

echo "3. both launchers restarted with the same command"
launch "$OUT/killed" "$(free_port)"
wait_both
grep -h "resumed from" "$OUT"/killed.node*.log | sed 's/^/   /'
grep -q "resumed from" "$OUT"/killed.node*.log || { echo "the restarted run did not resume"; exit 1; }
grep -h "sharding plan" "$OUT"/killed.node*.log | head -1 | sed 's/^/   /'

if [ "$REFERENCE" = 1 ]; then
  ref=$(last_eval "$OUT/reference")
  got=$(last_eval "$OUT/killed")
  if [ "$ref" != "$got" ]; then
    echo "4. MISMATCH: the resumed run's final evaluation differs from the reference"
    echo "   reference: $ref"
    echo "   resumed:   $got"
    exit 1
  fi
  echo "4. the resumed run's final evaluation equals the uninterrupted run's: $got" | cut -c1-160
fi
echo "done in $(( $(date +%s) - start )) s; logs and runs in $OUT"
