"""The installed commands (``[project.scripts]`` in pyproject.toml), the same programs as the repository's scripts:

- ``visual-dr3-train`` = ``python train.py``; ``visual-dr3-eval`` = ``python eval.py``;
- ``visual-dr3-generate`` = ``python -m visual_dr3.data.generate``; ``visual-dr3-report`` = ``python -m
  visual_dr3.report``.

Each returns None (exit status 0) after its ``main``; errors leave through ``SystemExit`` with the codes listed in
:mod:`visual_dr3.errors`. Imports happen inside the functions: eval's and generate's worker processes are spawned
and re-import the script that started them.
"""

from __future__ import annotations


def train() -> None:
    from visual_dr3.app.train import main

    main()


def evaluate() -> None:
    from visual_dr3.app.eval import main

    main()


def generate() -> None:
    from visual_dr3.data.generate import main

    main()


def report() -> None:
    from visual_dr3.report import main

    main()
