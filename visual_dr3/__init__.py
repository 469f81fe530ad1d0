"""visual-dr3: offline RL from images (CQL/COG + DR3) on robosuite grasping tasks."""

import os

# MuJoCo picks its OpenGL backend when it is first imported: default to headless EGL unless the user
# chose one. Every entry point imports this package before robosuite/mujoco.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"] if os.environ["MUJOCO_GL"] in ("egl", "osmesa") else "egl")

__version__ = "0.1.0"
