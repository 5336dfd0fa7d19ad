"""Replay rendering: kinematic CPU (MuJoCo) videos of eval rollouts and motion libraries.

``render`` holds the ``render-replay`` command and the render stage's work; ``planning`` picks the
motions, ``workers`` runs them on watched worker processes, ``video`` is one motion's frame loop over
``scene`` (MuJoCo scene and camera), and ``motion`` loads what is drawn.
"""
