#!/usr/bin/env python
"""Evaluate a trained policy in simulation: ``python eval.py --checkpoint runs/lift/checkpoints/last.ckpt
--episodes 50 --workers 2 --video videos/ --json eval.json`` (see ``--help``)."""

import visual_dr3  # noqa: F401  (sets MUJOCO_GL before anything imports mujoco)
from visual_dr3.app.eval import main

if __name__ == "__main__":
    main()
