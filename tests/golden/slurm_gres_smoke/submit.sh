#!/bin/bash
# Submit run golden to SLURM by hand: the same sbatch calls `grail-cluster run` makes,
# minus the ledger (so `status`/`resubmit` will not know these jobs). Prefer `grail-cluster run`.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p <TMP>/runs/golden/logs/train <TMP>/runs/golden/logs/select <TMP>/runs/golden/logs/eval <TMP>/runs/golden/logs/render <TMP>/runs/golden/logs/export <TMP>/runs/golden/logs/merge <TMP>/runs/golden/logs/web
JOB_train=$(sbatch --parsable train.sh)
echo "train: $JOB_train"
JOB_select=$(sbatch --parsable --dependency=afterok:$JOB_train select.sh)
echo "select: $JOB_select"
JOB_eval=$(sbatch --parsable --dependency=afterok:$JOB_select eval.sh)
echo "eval: $JOB_eval"
JOB_render=$(sbatch --parsable --dependency=aftercorr:$JOB_eval render.sh)
echo "render: $JOB_render"
JOB_export=$(sbatch --parsable --dependency=aftercorr:$JOB_eval export.sh)
echo "export: $JOB_export"
JOB_merge=$(sbatch --parsable --dependency=afterok:$JOB_export,afterok:$JOB_render merge.sh)
echo "merge: $JOB_merge"
JOB_web=$(sbatch --parsable --dependency=afterok:$JOB_merge web.sh)
echo "web: $JOB_web"
