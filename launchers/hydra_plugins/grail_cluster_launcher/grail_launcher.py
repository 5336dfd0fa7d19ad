"""The launcher classes under the name Hydra accepts: it instantiates plugins only from modules
under ``hydra_plugins.``, so these subclasses carry that module name. The implementation module is
imported as a module (not its classes), so Hydra's scan registers each launcher once."""

from grail_cluster.launchers import hydra_launcher as _impl


class GrailLocalLauncher(_impl.GrailLocalLauncher):
    pass


class GrailSlurmLauncher(_impl.GrailSlurmLauncher):
    pass
