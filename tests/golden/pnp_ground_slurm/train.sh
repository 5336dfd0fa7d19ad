#!/bin/bash
# golden:train: SONIC training: 8 processes, +exp=manager/universal_token/hoi/pnp_ground
# Rendered by grail-cluster 0.1.0 from plan <PLAN>. This file is submitted as is;
# dependencies, array subsets (resubmits) and GRAIL_ATTEMPT are given on the sbatch command line.
#SBATCH --job-name=golden:train
#SBATCH --comment=golden:train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=64
#SBATCH --mem=480G
#SBATCH --time=2-00:00:00
#SBATCH --gpus-per-node=8
#SBATCH --output=<TMP>/runs/golden/logs/train/slurm-%j.out
#SBATCH --error=<TMP>/runs/golden/logs/train/slurm-%j.err
#SBATCH --open-mode=append
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --requeue
#SBATCH --signal=USR2@120

set -euo pipefail
# Array task ids are shard indices; chunked arrays add their offset.
export GRAIL_INDEX=$(( ${SLURM_ARRAY_TASK_ID:-0} + ${GRAIL_INDEX_OFFSET:-0} ))
export GRAIL_NUM_MACHINES=1
export GRAIL_MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
# A port derived from the job id, so two trainings on one node do not collide.
export GRAIL_MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))
export GRAIL_RUN_DIR=<TMP>/runs/golden
export GRAIL_STAGE=train
export GRAIL_PLAN_HASH=<PLAN_HASH>
export GRAIL_ATTEMPT="${GRAIL_ATTEMPT:-0}"
# Logs by construction: logs/<stage>/<index>/<attempt>.{out,err}; earlier attempts are kept.
GRAIL_LOG_DIR="$GRAIL_RUN_DIR/logs/$GRAIL_STAGE/$GRAIL_INDEX"
mkdir -p "$GRAIL_LOG_DIR"
exec > >(tee -a "$GRAIL_LOG_DIR/$GRAIL_ATTEMPT.out") 2> >(tee -a "$GRAIL_LOG_DIR/$GRAIL_ATTEMPT.err" >&2)
echo "[grail] $GRAIL_STAGE index $GRAIL_INDEX attempt $GRAIL_ATTEMPT on $(hostname)${SLURMD_NODENAME:+ (slurm node $SLURMD_NODENAME)} at $(date -u +%FT%TZ)"
export HYDRA_FULL_ERROR=1
export OMNI_KIT_ACCEPT_EULA=Yes
export PYTHONUNBUFFERED=1
export WANDB_JOB_TYPE=train
export WANDB_MODE=offline
export WANDB_RUN_GROUP=golden
cd <TMP>/SONIC
# job.python must import grail-cluster here, or every grail step fails (after training, for train).
GRAIL_PYTHON=<PYTHON>
if ! GRAIL_PY_CHECK=$("$GRAIL_PYTHON" -c 'import grail_cluster' 2>&1); then
  echo "error: job.python=$GRAIL_PYTHON cannot import grail_cluster on $(hostname): ${GRAIL_PY_CHECK##*$'\n'}" >&2
  echo "  fix: job.python=/path/to/python-with-grail-cluster (unset, it is the interpreter that ran grail-cluster)" >&2
  exit 3
fi

# One task per node under srun, so the USR2 warning reaches the trainer (job steps get it).
grail_node() {
  export GRAIL_MACHINE_RANK="${SLURM_NODEID:-0}"
  # A requeued job continues its own run; a first start warm-starts when fine-tuning.
  if [ -f <TMP>/runs/golden/experiment/last.pt ]; then
    GRAIL_RESUME_ARGS=(++resume=True)
  else
    GRAIL_RESUME_ARGS=()
  fi
  <PYTHON> -m grail_cluster.entry audit-slices train --run-dir <TMP>/runs/golden --index "$GRAIL_INDEX" --plan-hash <PLAN_HASH> -- accelerate launch --num_processes=8 gear_sonic/train_agent_trl.py +exp=manager/universal_token/hoi/pnp_ground num_envs=2048 headless=True ++manager_env.commands.motion.motion_lib_cfg.motion_file=<TMP>/data/pickup_table_ha/robot ++manager_env.commands.motion.motion_lib_cfg.object_motion_file=<TMP>/data/pickup_table_ha/objects ++manager_env.config.object_usd_path=<TMP>/data/pickup_table/object_usd ++manager_env.commands.motion.motion_lib_cfg.bps_dir=<TMP>/data/pickup_table/bps ++experiment_dir=<TMP>/runs/golden/experiment "${GRAIL_RESUME_ARGS[@]}"
  # Machine rank 0 checks the checkpoints and writes the stage's success marker.
  if [ "${GRAIL_MACHINE_RANK:-0}" = 0 ]; then
    <PYTHON> -m grail_cluster.entry train --run-dir <TMP>/runs/golden --index "$GRAIL_INDEX" --plan-hash <PLAN_HASH>
  fi
}
export -f grail_node
srun --nodes=1 --ntasks-per-node=1 --kill-on-bad-exit=1 bash -euo pipefail -c grail_node
