"""SONIC's evaluator entry point, played by grail-cluster's CPU reference tracker (MuJoCo G1).

Same command line as SONIC's (``+checkpoint=...``, shard keys, data paths, trajectory recorder);
writes ``metrics_eval.json`` and ``<motion_key>.trajectory.pkl`` in SONIC's schema.
"""

from grail_cluster.sonic.reference.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
