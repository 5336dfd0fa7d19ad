#!/bin/bash
# golden:train: SONIC training: 8 processes, +exp=manager/universal_token/hoi/advanced_manip_ground
# Rendered by grail-cluster 0.1.0 from plan <PLAN> for the local executor, which
# sets GRAIL_INDEX (and CUDA_VISIBLE_DEVICES for GPU slots) and runs indices in dependency order.
# Resources: 64 CPU slot(s), 8 GPU slot(s).

set -euo pipefail
export GRAIL_INDEX="${GRAIL_INDEX:-0}"
export GRAIL_MACHINE_RANK=0
export GRAIL_NUM_MACHINES=1
export GRAIL_MASTER_ADDR=127.0.0.1
export GRAIL_MASTER_PORT="${GRAIL_MASTER_PORT:-29500}"
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

# A requeued job continues its own run; a first start warm-starts when fine-tuning.
if [ -f <TMP>/runs/golden/experiment/last.pt ]; then
  GRAIL_RESUME_ARGS=(++resume=True)
else
  GRAIL_RESUME_ARGS=()
fi
<PYTHON> -m grail_cluster.entry audit-slices train --run-dir <TMP>/runs/golden --index "$GRAIL_INDEX" --plan-hash <PLAN_HASH> -- accelerate launch --num_processes=8 gear_sonic/train_agent_trl.py +exp=manager/universal_token/hoi/advanced_manip_ground num_envs=2048 headless=True ++manager_env.commands.motion.motion_lib_cfg.motion_file=<TMP>/data/pickup_table_ha/robot ++manager_env.commands.motion.motion_lib_cfg.object_motion_file=<TMP>/data/pickup_table_ha/objects ++manager_env.config.object_usd_path=<TMP>/data/pickup_table/object_usd ++manager_env.commands.motion.motion_lib_cfg.bps_dir=<TMP>/data/pickup_table/bps ++experiment_dir=<TMP>/runs/golden/experiment "${GRAIL_RESUME_ARGS[@]}"
# Machine rank 0 checks the checkpoints and writes the stage's success marker.
if [ "${GRAIL_MACHINE_RANK:-0}" = 0 ]; then
  <PYTHON> -m grail_cluster.entry train --run-dir <TMP>/runs/golden --index "$GRAIL_INDEX" --plan-hash <PLAN_HASH>
fi
