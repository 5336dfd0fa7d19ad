#!/bin/bash
# Submit run golden to SLURM by hand: the same sbatch calls `grail-cluster run` makes,
# minus the ledger (so `status`/`resubmit` will not know these jobs). Prefer `grail-cluster run`.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p <TMP>/runs/golden/logs/train <TMP>/runs/golden/logs/select <TMP>/runs/golden/logs/eval <TMP>/runs/golden/logs/render <TMP>/runs/golden/logs/export <TMP>/runs/golden/logs/merge <TMP>/runs/golden/logs/web
# arrays are chunked at submit time when the cluster's MaxArraySize is smaller
JOB_train_0=$(sbatch --parsable --job-name=golden:train:0 --comment=golden:train:0 --export=ALL,GRAIL_INDEX_OFFSET=0,GRAIL_ATTEMPT=0 train.sh)
echo "train 0: $JOB_train_0"
JOB_select_0=$(sbatch --parsable --job-name=golden:select:0 --comment=golden:select:0 "--dependency=afterok:$JOB_train_0" --export=ALL,GRAIL_INDEX_OFFSET=0,GRAIL_ATTEMPT=0 select.sh)
echo "select 0: $JOB_select_0"
JOB_eval_0=$(sbatch --parsable --job-name=golden:eval:0 --comment=golden:eval:0 --array=0-2%3 "--dependency=afterok:$JOB_select_0" --export=ALL,GRAIL_INDEX_OFFSET=0,GRAIL_ATTEMPT=0 eval.sh)
echo "eval 0: $JOB_eval_0"
JOB_render_0=$(sbatch --parsable --job-name=golden:render:0 --comment=golden:render:0 --array=0-2%3 "--dependency=aftercorr:$JOB_eval_0" --export=ALL,GRAIL_INDEX_OFFSET=0,GRAIL_ATTEMPT=0 render.sh)
echo "render 0: $JOB_render_0"
JOB_export_0=$(sbatch --parsable --job-name=golden:export:0 --comment=golden:export:0 --array=0-2%3 "--dependency=aftercorr:$JOB_render_0" --export=ALL,GRAIL_INDEX_OFFSET=0,GRAIL_ATTEMPT=0 export.sh)
echo "export 0: $JOB_export_0"
JOB_merge_0=$(sbatch --parsable --job-name=golden:merge:0 --comment=golden:merge:0 --array=0%1 "--dependency=afterok:$JOB_export_0" --export=ALL,GRAIL_INDEX_OFFSET=0,GRAIL_ATTEMPT=0 merge.sh)
echo "merge 0: $JOB_merge_0"
JOB_web_0=$(sbatch --parsable --job-name=golden:web:0 --comment=golden:web:0 "--dependency=afterok:$JOB_merge_0" --export=ALL,GRAIL_INDEX_OFFSET=0,GRAIL_ATTEMPT=0 web.sh)
echo "web 0: $JOB_web_0"
