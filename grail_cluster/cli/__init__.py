"""The ``grail-cluster`` command line."""

from grail_cluster.cli.main import main

__all__ = ["main"]
