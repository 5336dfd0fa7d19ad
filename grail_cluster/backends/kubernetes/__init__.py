"""Kubernetes: one Indexed Job per stage, chained in the cluster by a driver Job.

- :mod:`.names`: Job names, labels, annotations and index tables, which every part agrees on;
- :mod:`.render`: the manifests (pure) and their per-submission copies;
- :mod:`.lint`: the checks the API schemas do not make;
- :mod:`.states`: pod, completion-index and shard states from the API's objects (pure);
- :mod:`.client`: :class:`~.client.KubernetesBackend`, the API calls (the registry's ``kubernetes``);
- :mod:`.driver`: ``grail-cluster drive``, what the driver Job runs.
"""
