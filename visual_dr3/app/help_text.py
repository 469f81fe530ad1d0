"""What ``--help`` says besides the flags: examples, environment variables and exit codes of ``train.py`` and
``eval.py`` (:func:`epilog`). Light: ``eval.py``'s parser imports it (no torch)."""

from __future__ import annotations

import argparse

from visual_dr3.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_USAGE

#: (variable, what it does) read by both commands
ENVIRONMENT = (
    ("MUJOCO_GL", "MuJoCo's rendering backend: egl (the default: headless, GPU or Mesa EGL), osmesa (software) "
                  "or glfw (a display)"),
    ("CUDA_VISIBLE_DEVICES", "the GPUs the process sees (none visible: the policy and training run on the CPU)"),
)
#: read by ``train.py`` only
TRAIN_ENVIRONMENT = (
    ("VISUAL_DR3_PRESET", "cpu, gpu, none or auto: the preset when --preset is not given (auto: gpu when a "
                          "CUDA device is visible, else cpu; none: no preset file, the code's defaults)"),
    ("VISUAL_DR3_DATA_ROOT", "the folder whose data/ holds the default datasets (default: the working "
                             "directory)"),
    ("OMP_NUM_THREADS", "CPU threads per training process (default: the cores divided by --devices)"),
)

#: (status, meaning) of ``train.py``
TRAIN_EXIT_CODES = (
    (0, "trained to --max_steps (the summary is printed; checkpoints/last.ckpt written)"),
    (1, "an unexpected error (a Python traceback)"),
    (EXIT_USAGE, "bad input: a one-line 'error: ...' naming the flag, file or key and what was expected"),
    (EXIT_DIVERGED, "training stopped on non-finite values; the last good checkpoint is kept"),
    ("128+N", f"stopped by signal N after saving checkpoints/last.ckpt (Ctrl-C/SIGINT: {EXIT_INTERRUPTED}, "
              f"SIGTERM: 143); continue with --resume auto"),
)
#: (status, meaning) of ``eval.py``
EVAL_EXIT_CODES = (
    (0, "evaluated (the summary is printed; --json and --video written)"),
    (1, "the evaluation failed (the env workers could not run the episodes), or an unexpected error"),
    (EXIT_USAGE, "bad input: a one-line 'error: ...' naming the flag or file and what was expected"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and epilog printed as written (line breaks and indentation kept); flags' help wrapped."""


def epilog(examples: tuple[str, ...], environment, exit_codes) -> str:
    """The text under the flags: examples, environment variables, exit codes (as written, see
    :class:`HelpFormatter`)."""
    width = max(len(name) for name, _ in environment)
    lines = ["examples:", *(f"  {e}" for e in examples), "", "environment variables:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in environment]
    lines += ["", "exit codes:"]
    lines += [f"  {str(code):<5}  {what}" for code, what in exit_codes]
    return "\n".join(lines)
