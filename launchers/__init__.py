"""launchers/ holds the Hydra launcher plugin (``hydra/launcher=grail_local|grail_slurm``): a thin
adapter that sends any Hydra app's ``-m`` jobs through grail-cluster's SLURM backend or a local
process queue, resumable from its own sweep ledger."""
