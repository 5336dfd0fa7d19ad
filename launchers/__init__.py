"""launchers/ holds the Hydra launcher plugin (``hydra/launcher=grail_local|grail_slurm``): a thin
adapter that runs any Hydra app's ``-m`` jobs as a grail-cluster run (plan, backend, ledger, markers),
resumable job by job."""
