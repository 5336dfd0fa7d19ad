"""Replay rendering: kinematic CPU (MuJoCo) videos of eval rollouts and motion libraries.

``grail_cluster.tools.replay.render`` holds the ``render-replay`` command and the render stage's work.
"""
