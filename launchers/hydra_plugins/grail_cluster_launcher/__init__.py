"""Hydra's entry to grail-cluster's launcher plugin (``hydra/launcher=grail_local|grail_slurm``).

Hydra finds plugins only in the ``hydra_plugins`` namespace package; pyproject.toml maps this
directory there. The launchers themselves are in ``grail_cluster.launchers.hydra_launcher``.
"""

from grail_cluster.launchers.hydra_config import register

# Called here, not only when hydra_config is first imported: Hydra's plugin scan re-executes this
# module after a Singleton state reset (which drops the ConfigStore entries), and the entries must
# come back then too.
register()
