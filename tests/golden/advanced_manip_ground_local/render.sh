#!/bin/bash
# golden:render: replay the shard's successful rollouts to vis/<motion_key>.mp4
# Rendered by grail-cluster 0.1.0 from plan <PLAN> for the local executor, which
# sets GRAIL_INDEX (and CUDA_VISIBLE_DEVICES for GPU slots) and runs indices in dependency order.
# Resources: 8 CPU slot(s), 0 GPU slot(s), indices 0..5.

set -euo pipefail
export GRAIL_INDEX="${GRAIL_INDEX:-0}"
export GRAIL_RUN_DIR=<TMP>/runs/golden
export GRAIL_STAGE=render
export GRAIL_PLAN_HASH=<PLAN_HASH>
export GRAIL_ATTEMPT="${GRAIL_ATTEMPT:-0}"
# Logs by construction: logs/<stage>/<index>/<attempt>.{out,err}; earlier attempts are kept.
GRAIL_LOG_DIR="$GRAIL_RUN_DIR/logs/$GRAIL_STAGE/$GRAIL_INDEX"
mkdir -p "$GRAIL_LOG_DIR"
exec > >(tee -a "$GRAIL_LOG_DIR/$GRAIL_ATTEMPT.out") 2> >(tee -a "$GRAIL_LOG_DIR/$GRAIL_ATTEMPT.err" >&2)
echo "[grail] $GRAIL_STAGE index $GRAIL_INDEX attempt $GRAIL_ATTEMPT on $(hostname)${SLURMD_NODENAME:+ (slurm node $SLURMD_NODENAME)} at $(date -u +%FT%TZ)"
export WANDB_JOB_TYPE=render
export WANDB_RUN_GROUP=golden
cd <TMP>/runs/golden
# job.python must import grail-cluster here, or every grail step fails (after training, for train).
GRAIL_PYTHON=<PYTHON>
if ! GRAIL_PY_CHECK=$("$GRAIL_PYTHON" -c 'import grail_cluster' 2>&1); then
  echo "error: job.python=$GRAIL_PYTHON cannot import grail_cluster on $(hostname): ${GRAIL_PY_CHECK##*$'\n'}" >&2
  echo "  fix: job.python=/path/to/python-with-grail-cluster (unset, it is the interpreter that ran grail-cluster)" >&2
  exit 3
fi

<PYTHON> -m grail_cluster.entry render --run-dir <TMP>/runs/golden --index "$GRAIL_INDEX" --plan-hash <PLAN_HASH>
