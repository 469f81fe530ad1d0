"""Typed config: defaults, per-task files, flag spellings, validation errors (one line, naming the flag)."""

from pathlib import Path

import pytest
import yaml

from visual_dr3.errors import UserError
from visual_dr3.app.cli_args import CONFIGS_DIR, dump_yaml, normalize_argv, parse_train_args
from visual_dr3.learner.config import TrainConfig, from_dict, to_dict

CONFIGS = CONFIGS_DIR  # the shipped presets (package data)


def test_defaults_and_flag_spellings():
    cfg = parse_train_args(["--max-steps", "7", "--batch_size=16", "--dr3-coef", "0.5", "--backup", "sarsa",
                            "--cql.min-q-weight", "2.5", "--model.encoder", "resnet18"])
    assert cfg.max_steps == 7 and cfg.batch_size == 16
    assert cfg.dr3.coef == 0.5 and cfg.algo.backup == "sarsa"
    assert cfg.cql.min_q_weight == 2.5 and cfg.model.encoder == "resnet18"
    assert cfg.task == "lift" and cfg.dr3.features == "encoder"


def test_normalize_argv_touches_names_not_values():
    assert normalize_argv(["--output-dir", "runs/a-b", "--dr3-coef=0.1", "-h"]) == \
        ["--output_dir", "runs/a-b", "--dr3.coef=0.1", "-h"]


def test_task_config_file_then_user_config_then_flags(tmp_path):
    user = tmp_path / "u.yaml"
    user.write_text("task: pick_place\nmax_steps: 11\ndr3:\n  coef: 0.2\n")
    cfg = parse_train_args(["--config", str(user), "--dr3.coef", "0.3"], configs_dir=CONFIGS)
    assert cfg.task == "pick_place"
    assert cfg.max_steps == 11  # user file beats configs/pick_place.yaml
    assert cfg.dr3.coef == 0.3  # flag beats both


def test_task_file_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("VISUAL_DR3_PRESET", "gpu")
    (tmp_path / "lift.yaml").write_text("task: lift\nbatch_size: 3\n")
    assert parse_train_args([], configs_dir=tmp_path).batch_size == 3
    assert parse_train_args(["--batch-size", "5"], configs_dir=tmp_path).batch_size == 5
    assert parse_train_args(["--preset", "none"], configs_dir=tmp_path).batch_size == 256  # no preset file


#: what a preset's own file may set: the scale (steps, batch, images, data size, evaluation and logging cadence,
#: and the warm-up's length, a number of steps); everything else is the task's method, the same in both presets
SCALE_KEYS = {"max_steps", "batch_size", "log_every", "checkpoint_every", "eval_every", "eval_episodes",
              "data.episodes", "data.image_size", "algo.bc_warmup_steps"}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("task", ["lift", "pick_place"])
def test_the_gpu_preset_is_the_cpu_method_at_scale(task):
    """The presets share the task's method (``<task>.yaml``) and differ only in scale (``cpu/``, ``gpu/``):
    the GPU preset runs what was measured to learn on the CPU."""
    for preset in ("cpu", "gpu"):
        own = yaml.safe_load((CONFIGS / preset / f"{task}.yaml").read_text())
        assert set(_flat(own)) <= SCALE_KEYS, (preset, set(_flat(own)) - SCALE_KEYS)
    cpu = _flat(to_dict(parse_train_args(["--task", task, "--preset", "cpu"], configs_dir=CONFIGS)))
    gpu = _flat(to_dict(parse_train_args(["--task", task, "--preset", "gpu"], configs_dir=CONFIGS)))
    differ = {k for k in cpu if cpu[k] != gpu[k]}
    assert differ == SCALE_KEYS - ({"log_every", "eval_episodes"}) | {"preset"}, differ
    assert (gpu["algo.backup"], gpu["algo.n_step"], gpu["algo.policy_ema"], gpu["algo.bc_loss"]) == \
        ("sarsa", 5, 0.99, "mse")
    assert (gpu["max_steps"], gpu["batch_size"], gpu["data.image_size"], gpu["algo.bc_warmup_steps"]) == \
        (20000, 256, 84, 10000)
    assert gpu["eval_every"] > 0  # it evaluates during training


def test_cog_config_sources():
    cfg = parse_train_args(["--config", str(CONFIGS / "pick_place_cog.yaml")], configs_dir=CONFIGS)
    assert [(s.filter_key, s.weight) for s in cfg.data.sources] == [("prior", 0.5), ("task", 0.5)]
    assert cfg.algo.bc_warmup_steps == 10000


def test_td_recipe_config_layers_over_the_cpu_preset(monkeypatch):
    """``--config td``: the TD recipe over the task's cpu preset; what it does not set stays the preset's."""
    monkeypatch.setenv("VISUAL_DR3_PRESET", "cpu")
    base = parse_train_args(["--task", "lift"], configs_dir=CONFIGS)
    cfg = parse_train_args(["--task", "lift", "--config", "td"], configs_dir=CONFIGS)
    assert (cfg.algo.backup, cfg.algo.target_encoder, cfg.algo.target_action, cfg.algo.actor_objective,
            cfg.cql.min_q_weight, cfg.cql.gap_floor, cfg.dr3.features, cfg.model.actor_encoder) == \
        ("td", True, "mean", "awr", 0.1, 0.0, "penultimate", "separate_bc")
    assert base.algo.backup == "sarsa" and base.cql.min_q_weight == 1.0 and base.algo.actor_objective == "sac"
    assert (cfg.max_steps, cfg.algo.n_step, cfg.algo.bc_warmup_steps, cfg.dr3.coef, cfg.data.image_size) == \
        (base.max_steps, base.algo.n_step, base.algo.bc_warmup_steps, base.dr3.coef, base.data.image_size)
    assert parse_train_args(["--task", "lift", "--config", "td", "--cql.min_q_weight", "0.3"],
                            configs_dir=CONFIGS).cql.min_q_weight == 0.3  # a flag beats the file
    long = parse_train_args(["--task", "lift", "--config", "td", "--config", "experiments/td_lift_long"],
                            configs_dir=CONFIGS)  # the expert-lift schedule: steps, warm-up and CQL weight only
    assert (long.max_steps, long.algo.bc_warmup_steps, long.cql.min_q_weight) == (1500, 1000, 0.05)
    assert (long.algo.backup, long.algo.actor_objective, long.dr3.features, long.data.image_size) == \
        (cfg.algo.backup, cfg.algo.actor_objective, cfg.dr3.features, cfg.data.image_size)


def test_config_takes_a_path_or_a_shipped_config_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: the shipped files are found in the package
    want = parse_train_args(["--config", str(CONFIGS / "pick_place_cog.yaml")], configs_dir=CONFIGS)
    for name in ("pick_place_cog", "pick_place_cog.yaml", "configs/pick_place_cog.yaml", "--config=pick_place_cog"):
        argv = [name] if name.startswith("--") else ["--config", name]
        assert parse_train_args(argv, configs_dir=CONFIGS) == want, name
    assert parse_train_args(["--config", "experiments/probe"], configs_dir=CONFIGS).cql.min_q_weight == 0.0
    (tmp_path / "configs").mkdir()  # a file of the user's wins over a shipped name
    (tmp_path / "configs" / "pick_place_cog.yaml").write_text("task: lift\n")
    assert parse_train_args(["--config", "configs/pick_place_cog.yaml"], configs_dir=CONFIGS).task == "lift"
    with pytest.raises(UserError, match=r"^--config nope: file not found, and not a shipped config \(shipped: cpu/lift, "
                                        r"cpu/pick_place, experiments/cql_vs_dr3_cog, .*pick_place_cog, stack, td\)$"):
        parse_train_args(["--config", "nope"], configs_dir=CONFIGS)


@pytest.mark.parametrize("argv, needle", [
    (["--max-steps", "x"], "max_steps"),
    (["--bogus", "1"], "--bogus"),
    (["--dr3.bogus", "1"], "dr3.bogus"),
    (["--backup", "foo"], "algo.backup"),
    (["--max-steps", "0"], "--max_steps"),
    (["--batch-size", "-4"], "--batch_size"),
    (["--dr3-coef", "-1"], "--dr3.coef"),
    (["--algo.discount", "1.5"], "--algo.discount"),
    (["--model.hidden_dims", "[]"], "--model.hidden_dims"),
    (["--config", "/nonexistent/cfg.yaml"], "/nonexistent/cfg.yaml"),
])
def test_bad_values_are_one_line_errors(argv, needle):
    with pytest.raises(UserError) as e:
        parse_train_args(argv)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_bad_key_in_config_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("cql:\n  min_q_weigth: 3\n")
    with pytest.raises(UserError, match="min_q_weigth"):
        parse_train_args(["--config", str(f)])


def test_weights_on_some_sources_rejected(tmp_path):
    f = tmp_path / "w.yaml"
    f.write_text("data:\n  sources:\n    - {filter_key: prior, weight: 0.5}\n    - {filter_key: task}\n")
    with pytest.raises(UserError, match="data.sources"):
        parse_train_args(["--config", str(f)])


def test_round_trip_yaml_and_dict():
    cfg = parse_train_args(["--config", str(CONFIGS / "pick_place_cog.yaml")])
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert from_dict(to_dict(TrainConfig())) == TrainConfig()


@pytest.mark.parametrize("preset, max_steps, batch", [("cpu", 1000, 64), ("gpu", 20000, 256), ("none", 100000, 256)])
def test_help_shows_the_presets_values_and_says_so(preset, max_steps, batch, capsys):
    """train.py --help: the defaults shown are the preset's (what the run would get), a line says which preset
    and points to --print_config; examples, environment variables and exit codes follow."""
    from visual_dr3.app.cli_args import EXAMPLES
    from visual_dr3.app.help_text import TRAIN_ENVIRONMENT, TRAIN_EXIT_CODES

    with pytest.raises(SystemExit) as e:
        parse_train_args(["--task", "lift", "--preset", preset, "--help"], configs_dir=CONFIGS)
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"Preset: {preset} (--preset {preset}), task lift. Presets override the code's defaults" in out
    assert "--print_config" in out.split("Preset:")[1].split("options:")[0]
    assert f"Gradient steps to train. (type: int, default: {max_steps})" in out
    assert f"Transitions per step, per device. (type: int, default: {batch})" in out
    assert all(" ".join(ex.split()) in out for ex in EXAMPLES)
    assert all(name in out for name, _ in TRAIN_ENVIRONMENT) and "MUJOCO_GL" in out
    assert [c for c, _ in TRAIN_EXIT_CODES] == [0, 1, 2, 3, "128+N"]
    assert "exit codes: 0 trained to --max_steps" in out and "3 training stopped on non-finite values" in out


def test_help_of_a_config_file_shows_its_values(capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--config", "pick_place_cog", "--preset", "gpu", "-h"], configs_dir=CONFIGS)
    out = " ".join(capsys.readouterr().out.split())
    assert "task pick_place" in out and "(type: int, default: 10000)" in out  # algo.bc_warmup_steps of the file


def test_help_examples_parse(monkeypatch, capsys):
    """Every example of train.py --help and eval.py --help parses as written."""
    import shlex

    from visual_dr3.app import eval as eval_app
    from visual_dr3.app.cli_args import EXAMPLES

    for ex in EXAMPLES:
        argv = shlex.split(ex.split("#")[0])
        assert argv[0] == "train.py"
        if "--print_config" in argv:
            with pytest.raises(SystemExit) as e:
                parse_train_args(argv[1:], configs_dir=CONFIGS)
            assert e.value.code == 0 and "max_steps:" in capsys.readouterr().out
        else:
            parse_train_args(argv[1:], configs_dir=CONFIGS)
    for ex in eval_app.EXAMPLES:
        argv = shlex.split(ex.split("#")[0])
        assert argv[0] == "eval.py"
        eval_app.build_parser().parse_args(argv[1:])


def test_eval_help_says_what_it_does_by_default():
    from visual_dr3.app import eval as eval_app
    from visual_dr3.app.help_text import EVAL_EXIT_CODES

    text = " ".join(eval_app.build_parser().format_help().split())
    assert "By default it acts as training's evaluation does" in text and "the mean action" in text
    assert "--sample sample actions from the policy's distribution" in text
    assert "MUJOCO_GL" in text and "CUDA_VISIBLE_DEVICES" in text
    assert [c for c, _ in EVAL_EXIT_CODES] == [0, 1, 2, 130] and "exit codes: 0 evaluated" in text
