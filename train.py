#!/usr/bin/env python
"""Train offline CQL + DR3 from images: ``python train.py --task pick_place`` (see ``--help``)."""

import visual_dr3  # noqa: F401  (sets MUJOCO_GL before anything imports mujoco)
from visual_dr3.app.train import main

if __name__ == "__main__":
    main()
