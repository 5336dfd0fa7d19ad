#!/bin/bash
# golden:merge: merge every export shard of one step into exported/step_S/merged
# Rendered by grail-cluster 0.1.0 from plan <PLAN>. This file is submitted as is;
# dependencies, array subsets (resubmits) and GRAIL_ATTEMPT are given on the sbatch command line.
#SBATCH --job-name=golden:merge
#SBATCH --comment=golden:merge
#SBATCH --array=0-1%2
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=01:00:00
#SBATCH --output=<TMP>/runs/golden/logs/merge/slurm-%A_%a.out
#SBATCH --error=<TMP>/runs/golden/logs/merge/slurm-%A_%a.err
#SBATCH --open-mode=append
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --no-requeue

set -euo pipefail
# Array task ids are shard indices; chunked arrays add their offset.
export GRAIL_INDEX=$(( ${SLURM_ARRAY_TASK_ID:-0} + ${GRAIL_INDEX_OFFSET:-0} ))
export GRAIL_RUN_DIR=<TMP>/runs/golden
export GRAIL_STAGE=merge
export GRAIL_PLAN_HASH=<PLAN_HASH>
export GRAIL_ATTEMPT="${GRAIL_ATTEMPT:-0}"
# Logs by construction: logs/<stage>/<index>/<attempt>.{out,err}; earlier attempts are kept.
GRAIL_LOG_DIR="$GRAIL_RUN_DIR/logs/$GRAIL_STAGE/$GRAIL_INDEX"
mkdir -p "$GRAIL_LOG_DIR"
exec > >(tee -a "$GRAIL_LOG_DIR/$GRAIL_ATTEMPT.out") 2> >(tee -a "$GRAIL_LOG_DIR/$GRAIL_ATTEMPT.err" >&2)
echo "[grail] $GRAIL_STAGE index $GRAIL_INDEX attempt $GRAIL_ATTEMPT on $(hostname)${SLURMD_NODENAME:+ (slurm node $SLURMD_NODENAME)} at $(date -u +%FT%TZ)"
export WANDB_JOB_TYPE=merge
export WANDB_RUN_GROUP=golden
cd <TMP>/runs/golden
# job.python must import grail-cluster here, or every grail step fails (after training, for train).
GRAIL_PYTHON=<PYTHON>
if ! GRAIL_PY_CHECK=$("$GRAIL_PYTHON" -c 'import grail_cluster' 2>&1); then
  echo "error: job.python=$GRAIL_PYTHON cannot import grail_cluster on $(hostname): ${GRAIL_PY_CHECK##*$'\n'}" >&2
  echo "  fix: job.python=/path/to/python-with-grail-cluster (unset, it is the interpreter that ran grail-cluster)" >&2
  exit 3
fi

<PYTHON> -m grail_cluster.entry merge --run-dir <TMP>/runs/golden --index "$GRAIL_INDEX" --plan-hash <PLAN_HASH>
