"""SONIC's trainer entry point, played by grail-cluster's CPU reference tracker (MuJoCo G1 + PPO).

It takes SONIC's command line unchanged (``+exp=...``, ``num_envs=``, ``++manager_env...`` overrides),
so the commands grail-cluster renders for SONIC run here on a machine without Isaac Lab or a GPU.
"""

from grail_cluster.sonic.reference.train import main

if __name__ == "__main__":
    raise SystemExit(main())
