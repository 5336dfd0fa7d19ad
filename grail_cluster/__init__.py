"""grail-cluster: plan, render and submit the GRAIL data lifecycle."""

__version__ = "0.1.0"
