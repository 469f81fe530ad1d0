"""Command line of ``train.py``: typed config from defaults, the preset files (``visual_dr3/configs/<task>.yaml``),
``--config`` and flags.

The presets ship inside the package (:data:`CONFIGS_DIR`, package data), the one copy of them; ``--config`` takes
a YAML file or the name of a shipped one (``pick_place_cog``, ``pick_place_cog.yaml`` or, as the files were once
found at the repository's top, ``configs/pick_place_cog.yaml``): :func:`resolve_config_file`.

Flags may be written with dashes or underscores (``--max-steps`` = ``--max_steps``); nested fields use dots
(``--cql.min_q_weight 5``). Short aliases: ``--dr3-coef`` = ``--dr3.coef``, ``--backup`` = ``--algo.backup``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from visual_dr3.errors import UserError, command_name
from visual_dr3.learner.config import TrainConfig, validate

#: the shipped presets and example configs (package data): ``<task>.yaml`` (the method), ``cpu/<task>.yaml`` and
#: ``gpu/<task>.yaml`` (the scale), ``experiments/``
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"

ALIASES = {"--dr3_coef": "--dr3.coef", "--backup": "--algo.backup", "--min_q_weight": "--cql.min_q_weight"}


def shipped_configs() -> list[str]:
    """Names of the shipped config files, relative to :data:`CONFIGS_DIR` without ``.yaml`` (``lift``,
    ``cpu/lift``, ``experiments/probe``, ...)."""
    return sorted(str(p.relative_to(CONFIGS_DIR).with_suffix("")) for p in CONFIGS_DIR.rglob("*.yaml"))


def resolve_config_file(value: str) -> str:
    """The file ``--config VALUE`` names: VALUE itself when it is a file, else the shipped config of that name
    (``pick_place_cog``, ``pick_place_cog.yaml``, ``configs/pick_place_cog.yaml``); a one-line UserError when
    neither exists."""
    if Path(value).is_file():
        return value
    name = value[len("configs/"):] if value.startswith("configs/") else value
    shipped = CONFIGS_DIR / (name if name.endswith((".yaml", ".yml")) else name + ".yaml")
    if name and shipped.is_file():
        return str(shipped)
    raise UserError(f"--config {value}: file not found, and not a shipped config (shipped: "
                    f"{', '.join(shipped_configs())})")


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """``--foo-bar=1`` -> ``--foo_bar=1`` (option names only), then apply :data:`ALIASES`; every ``--config``
    value becomes the file it names (:func:`resolve_config_file`)."""
    out: list[str] = []
    for tok in argv:
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok.partition("=")
            name = "--" + name[2:].replace("-", "_")
            name = ALIASES.get(name, name)
            if name == "--config" and eq:
                value = resolve_config_file(value)
            tok = name + eq + value
        elif out and out[-1] == "--config":
            tok = resolve_config_file(tok)
        out.append(tok)
    return out


DESCRIPTION = "Offline CQL + DR3 from images on a robosuite grasping task (robomimic-layout HDF5 data)."
SYNTAX = ("Flags take dashes or underscores; nested fields use dots (--dr3.coef 0.01 --cql.min_q_weight 5); short "
          "forms: --dr3-coef, --backup, --min-q-weight.")
EXAMPLES = (
    "train.py --task lift                    # the preset's recipe; data/lift_*.hdf5 is generated first if missing",
    "train.py --task lift --print_config     # every resolved value; nothing runs",
    "train.py --task lift --preset gpu --print_config   # the full-scale preset's values",
    "train.py --config pick_place_cog        # a shipped config (visual_dr3/configs/pick_place_cog.yaml)",
    "train.py --task lift --dataset my_lift.hdf5 --max-steps 2000 --eval-every 500 --output-dir runs/mine",
    "train.py --task lift --output-dir runs/mine --resume auto   # continue from checkpoints/last.ckpt",
    "train.py --task lift --devices 2        # DDP on 2 GPUs (--num-nodes N under a launcher, e.g. srun)",
)


def _formatter():
    from jsonargparse import DefaultHelpFormatter

    from visual_dr3.app.help_text import HelpFormatter

    class TrainHelpFormatter(HelpFormatter, DefaultHelpFormatter):
        """jsonargparse's (types, defaults) with the description and epilog as written."""

    return TrainHelpFormatter


def build_parser(help_defaults: Sequence[Path] = (), preset_note: str = "") -> ArgumentParser:
    """train.py's parser. For ``--help``: ``help_defaults``, the preset's and ``--config`` files, become
    jsonargparse's default config files, so the defaults shown are the values the run would get;
    ``preset_note`` says which preset that is (:func:`help_preset_note`)."""
    from visual_dr3.app.help_text import ENVIRONMENT, TRAIN_ENVIRONMENT, TRAIN_EXIT_CODES, epilog

    # the config fields' one-line docs (attribute docstrings) become the flags' --help text; jsonargparse
    # keeps this setting process-wide, so it is made here, when a parser is built, not at import
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    prog = command_name("train.py")
    examples = tuple(e.replace("train.py", prog, 1) for e in EXAMPLES)
    parser = ArgumentParser(
        prog=prog, exit_on_error=False, default_env=False, formatter_class=_formatter(),
        usage="%(prog)s [--task TASK] [--preset {auto,cpu,gpu,none}] [--config FILE|NAME] [--FLAG VALUE ...] "
              "[--print_config]",
        default_config_files=[str(f) for f in help_defaults] or None,
        description="\n\n".join(t for t in (DESCRIPTION, preset_note, SYNTAX) if t),
        epilog=epilog(examples, TRAIN_ENVIRONMENT + ENVIRONMENT, TRAIN_EXIT_CODES))
    parser.add_argument("--config", action=ActionConfigFile,
                        help="YAML config file, or the name of a shipped one (pick_place_cog, cpu/lift, "
                             "experiments/probe); over the preset's files, under the flags. May be repeated.")
    parser.add_class_arguments(TrainConfig, as_group=False)
    return parser


def help_preset_note(preset: str, why: str, task: str, files: Sequence[Path]) -> str:
    """The line at the top of ``train.py --help``: which preset applies and that it overrides the code's
    defaults (the values shown are the preset's), and how to see every resolved value."""
    import textwrap

    shown = ", ".join(str(f.relative_to(CONFIGS_DIR)) if f.is_relative_to(CONFIGS_DIR) else str(f) for f in files)
    text = (f"Preset: {preset} ({why}), task {task}. Presets override the code's defaults: the defaults shown "
            f"below already include {shown or 'no preset file'} (in visual_dr3/configs/) and any --config file "
            f"given; flags override them all. --preset cpu|gpu|none picks a preset, --task another task's files. "
            f"See every resolved value with --print_config (nothing runs).")
    return textwrap.fill(text, width=110)


def _scan(argv: list[str], name: str) -> Optional[str]:
    for i, tok in enumerate(argv):
        if tok == name and i + 1 < len(argv):
            return argv[i + 1]
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    return None


def _task_of(argv: list[str]) -> str:
    task = _scan(argv, "--task")
    if task is None:
        cfg_file = _scan(argv, "--config")
        if cfg_file is not None and Path(cfg_file).is_file():
            try:
                loaded = yaml.safe_load(Path(cfg_file).read_text()) or {}
            except yaml.YAMLError as e:
                raise UserError(f"--config {cfg_file}: not valid YAML ({str(e).splitlines()[0]})") from None
            if isinstance(loaded, dict) and isinstance(loaded.get("task"), str):
                task = loaded["task"]
    return task or TrainConfig.task


#: ``none``: no preset file, the code's defaults (what the test suite builds its tiny runs on)
PRESETS = ("cpu", "gpu", "none")


PRESET_ENV = "VISUAL_DR3_PRESET"


def resolve_preset(argv: Sequence[str]) -> tuple[str, str]:
    """``(preset, why)``: ``--preset cpu|gpu|none`` as given, else the environment variable ``VISUAL_DR3_PRESET``
    (cpu|gpu|none|auto; the test suite pins none), else (``auto``) cpu when no CUDA device is visible."""
    asked = _scan(list(argv), "--preset")
    where = "--preset"
    if asked is None and os.environ.get(PRESET_ENV):
        asked, where = os.environ[PRESET_ENV], PRESET_ENV
    if asked in PRESETS:
        return asked, f"{where} {asked}"
    if asked not in (None, "auto"):
        raise UserError(f"{where}: got {asked!r}; expected one of auto, cpu, gpu, none")
    import torch

    if torch.cuda.is_available():
        return "gpu", f"{torch.cuda.device_count()} CUDA device(s) visible"
    return "cpu", "no CUDA device visible"


def preset_files(configs_dir: Path, task: str, preset: str) -> list[Path]:
    """The config files a preset layers under ``--config`` and flags: ``<task>.yaml`` (the method, shared by both
    presets), then the preset's scale, ``cpu/<task>.yaml`` or ``gpu/<task>.yaml`` (where one exists); none for the
    preset ``none``."""
    if preset == "none":
        return []
    files = [Path(configs_dir) / f"{task}.yaml", Path(configs_dir) / preset / f"{task}.yaml"]
    return [f for f in files if f.is_file()]


def parse_train_args(argv: Sequence[str], configs_dir: Optional[Path] = None) -> TrainConfig:
    """Parse and validate; every problem becomes a one-line :class:`UserError` naming the flag or key.

    Precedence (lowest first): dataclass defaults, ``configs/<task>.yaml``, ``configs/<preset>/<task>.yaml``,
    ``--config FILE``, flags (preset ``none``: no preset file). The resolved preset is recorded in ``cfg.preset``."""
    argv = normalize_argv(argv)
    prefix: list[str] = []
    preset, why = resolve_preset(argv)
    task = _task_of(argv)
    files = preset_files(Path(configs_dir), task, preset) if configs_dir is not None else []
    for f in files:
        prefix += ["--config", str(f)]
    if "-h" in argv or "--help" in argv:  # the defaults shown are the values this command line would get
        user = [Path(v) for k, v in zip(argv, argv[1:]) if k == "--config"]
        user += [Path(t.split("=", 1)[1]) for t in argv if t.startswith("--config=")]
        build_parser(files + user, help_preset_note(preset, why, task, files)).parse_args(["--help"])
    parser = build_parser()
    try:
        ns = parser.parse_args(prefix + argv)
        cfg = parser.instantiate(ns)
    except SystemExit:
        raise
    except Exception as e:  # jsonargparse's ArgumentError (unknown key, wrong type), YAML errors
        msg = " ".join(str(e).split())
        raise UserError(f"invalid arguments: {msg}") from None
    cfg_dict = {k: v for k, v in vars(cfg).items() if k != "config"}
    cfg_dict["preset"] = preset
    return validate(TrainConfig(**cfg_dict))


def dump_yaml(cfg: TrainConfig) -> str:
    from visual_dr3.learner.config import to_dict

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
