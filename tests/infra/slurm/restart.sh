#!/usr/bin/env bash
# Re-renders the Slurm config from the environment (e.g. GRAIL_SLURM_MAX_ARRAY_SIZE=4) and
# restarts slurmctld + slurmd so it takes effect; starts the whole cluster if it is down.
# Running jobs survive (their slurmstepd processes keep running); job history is kept.
#   GRAIL_SLURM_MAX_ARRAY_SIZE=4 tests/infra/slurm/restart.sh
set -euo pipefail
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/up.sh" --reconfigure "$@"
