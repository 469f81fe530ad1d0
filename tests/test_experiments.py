"""The DR3 study scripts (``experiments/``): the runs and commands each builds per scale (exact), skip/resume on
fake run folders with a fake ``train.py``, and one tiny end-to-end run of the probe through its real CLI."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from visual_dr3.learner.config import to_dict  # noqa: E402
from experiments import common, cql_vs_dr3, learn_to_grasp, sarsa_vs_td, sensitivity  # noqa: E402
from experiments.runner import last_logged_step  # noqa: E402
from visual_dr3.app.cli_args import CONFIGS_DIR  # noqa: E402

CFG = CONFIGS_DIR / "experiments"


def plan(module, *argv):
    args = module.build_parser().parse_args(list(argv))
    return module.plan(args)


def by_name(runs):
    return {r.name: r for r in runs}


# -- the commands each script builds ------------------------------------------------------------------
def test_learn_to_grasp_runs_the_cpu_preset_with_bc_given_three_times_the_steps(monkeypatch):
    from visual_dr3.app.cli_args import parse_train_args

    monkeypatch.delenv("VISUAL_DR3_PRESET", raising=False)
    scale, runs = plan(learn_to_grasp, "--scale", "cpu", "--kinds", "expert", "mixed")
    assert (scale.max_steps, scale.eval_every, scale.eval_episodes, scale.seeds) == (1000, 500, 50, (1, 2, 3))
    assert len(runs) == 2 * 3 * 3 and {r.group for r in runs} == {"lift_expert", "lift_mixed"}
    for r in runs:
        assert r.train_args[:2] == ("--preset", "cpu")
        cfg = parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR)
        assert cfg.preset == "cpu" and cfg.seed == r.seed and cfg.max_steps == r.max_steps
        assert cfg.algo.backup == "sarsa" and cfg.algo.n_step == 5 and not cfg.progress and cfg.wandb == "off"
        assert cfg.algo.bc_loss == "mse" and cfg.algo.policy_ema == 0.99 and cfg.model.actor_encoder == "shared"
        want = {"bc": ("bc", 0.01, 1000, 500), "cql": ("cql", 0.0, 1000, 500), "dr3": ("cql", 0.01, 1000, 500)}
        assert (cfg.algorithm, cfg.dr3.coef, cfg.max_steps, cfg.eval_every) == want[r.condition]
        assert cfg.dataset == f"data/lift_{r.group.split('_')[1]}_48px_100ep.hdf5"



def test_kl_conditions_set_the_kl_weight_beside_cql_and_dr3(monkeypatch):
    from visual_dr3.app.cli_args import parse_train_args

    monkeypatch.delenv("VISUAL_DR3_PRESET", raising=False)
    _, runs = plan(learn_to_grasp, "--conditions", "kl", "dr3_kl", "--kl-coef", "0.05", "--seeds", "1")
    got = {r.condition: parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR) for r in runs}
    assert {c: (cfg.dr3.coef, cfg.kl.coef) for c, cfg in got.items()} == {"kl": (0.0, 0.05), "dr3_kl": (0.01, 0.05)}
    _, runs = plan(cql_vs_dr3, "--scale", "cpu", "--kinds", "mixed", "--seeds", "0", "--conditions", "cql", "dr3",
                   "kl", "dr3_kl")
    got = {r.condition: parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR) for r in runs}
    assert {c: (cfg.dr3.coef, cfg.kl.coef) for c, cfg in got.items()} == {
        "cql": (0.0, 0.0), "dr3": (0.01, 0.0), "kl": (0.0, 1.0), "dr3_kl": (0.01, 1.0)}
    assert [r.out_dir.name for r in runs] == ["cql_s0", "dr3_s0", "kl_s0", "dr3_kl_s0"]


def test_probe_cpu_runs_and_exact_command():
    scale, runs = plan(sarsa_vs_td, "--scale", "cpu")
    assert (scale.image_size, scale.max_steps, scale.batch_size, scale.seeds) == (48, 3000, 64, (0, 1))
    assert [r.name for r in runs] == ["sarsa_s0", "sarsa_s1", "td_s0", "td_s1"]
    td = by_name(runs)["td_s1"]
    assert td.out_dir == Path("runs/study/sarsa_vs_td/cpu/td_s1")
    assert td.dataset.path == Path("data/lift_mixed_48px_50ep.hdf5")
    assert td.command()[:2] == [sys.executable, str(ROOT / "train.py")]
    assert list(td.train_args) == [
        "--preset", "none",
        "--config", str(CFG / "probe.yaml"), "--task", "lift", "--dataset", "data/lift_mixed_48px_50ep.hdf5",
        "--output-dir", "runs/study/sarsa_vs_td/cpu/td_s1", "--seed", "1", "--max-steps", "3000",
        "--batch-size", "64", "--model.encoder", "drq", "--log-every", "25", "--checkpoint-every", "500",
        "--eval-every", "0", "--resume", "auto", "--algo.bc_warmup_steps", "3000", "--backup", "td"]
    sarsa = by_name(runs)["sarsa_s0"].train_args
    assert sarsa[-4:] == ("--algo.bc_warmup_steps", "3000", "--backup", "sarsa")


def test_probe_recipe_scale_is_the_td_recipe_with_dr3_off_and_only_a_prime_differs():
    from visual_dr3.app.cli_args import CONFIGS_DIR, parse_train_args

    scale, runs = plan(sarsa_vs_td, "--scale", "recipe")
    assert (scale.image_size, scale.max_steps, scale.batch_size, scale.seeds, scale.eval_every) == \
        (48, 1000, 64, (1, 2, 3), 1000)
    assert len(runs) == 6 and runs[0].dataset.path == Path("data/lift_mixed_48px_50ep.hdf5")
    cfgs = {r.name: parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR) for r in runs if r.seed == 1}
    td, sarsa = cfgs["td_s1"], cfgs["sarsa_s1"]
    assert (td.algo.backup, sarsa.algo.backup) == ("td", "sarsa")
    assert (td.preset, td.algo.target_encoder, td.algo.target_action, td.algo.actor_objective, td.cql.min_q_weight,
            td.dr3.coef, td.dr3.features, td.model.actor_encoder, td.algo.bc_warmup_steps, td.algo.n_step) == \
        ("cpu", True, "mean", "awr", 0.1, 0.0, "penultimate", "separate_bc", 500, 5)
    a, b = to_dict(td), to_dict(sarsa)
    a["algo"].pop("backup"), b["algo"].pop("backup"), a.pop("output_dir"), b.pop("output_dir")
    assert a == b  # a' is the only difference


def test_probe_gpu_scale_and_overrides():
    scale, runs = plan(sarsa_vs_td, "--scale", "gpu")
    assert (scale.image_size, scale.max_steps, scale.batch_size, scale.seeds, scale.episodes) == \
        (84, 100_000, 256, (0, 1, 2), 200)
    assert len(runs) == 6 and runs[0].dataset.path == Path("data/lift_mixed_84px_200ep.hdf5")
    assert runs[0].out_dir == Path("runs/study/sarsa_vs_td/gpu/sarsa_s0")
    a = runs[0].train_args
    assert a[a.index("--max-steps") + 1] == "100000" and a[a.index("--algo.bc_warmup_steps") + 1] == "100000"
    # smoke overrides: every size follows, the BC warm-up follows --max-steps, extra flags come last
    scale, runs = plan(sarsa_vs_td, "--scale", "gpu", "--seeds", "7", "--max-steps", "4", "--image-size", "32",
                       "--episodes", "2", "--horizon", "20", "--out-root", "o", "--data-dir", "d",
                       "--train-args", "--model.feature_dim 32 --model.hidden_dims '[32, 32]'")
    assert [r.name for r in runs] == ["sarsa_s7", "td_s7"]
    assert runs[1].dataset.path == Path("d/lift_mixed_32px_2ep_h20.hdf5")
    assert list(runs[1].train_args) == [
        "--preset", "none",
        "--config", str(CFG / "probe.yaml"), "--task", "lift", "--dataset", "d/lift_mixed_32px_2ep_h20.hdf5",
        "--output-dir", "o/td_s7", "--seed", "7", "--max-steps", "4", "--batch-size", "256",
        "--model.encoder", "drq", "--log-every", "100", "--checkpoint-every", "5000", "--eval-every", "0",
        "--resume", "auto", "--algo.bc_warmup_steps", "4", "--backup", "td",
        "--model.feature_dim", "32", "--model.hidden_dims", "[32, 32]"]
    assert runs[1].dataset.command(2)[2:] == [
        "visual_dr3.data.generate", "--task", "lift", "--kind", "mixed", "--episodes", "2", "--image-size", "32",
        "--out", "d/lift_mixed_32px_2ep_h20.hdf5", "--workers", "2", "--horizon", "20"]


def test_cql_vs_dr3_cpu_and_gpu_runs():
    scale, runs = plan(cql_vs_dr3, "--scale", "cpu")
    assert (scale.image_size, scale.max_steps, scale.eval_every, scale.eval_episodes, scale.seeds) == \
        (48, 1500, 500, 20, (0, 1, 2))
    assert len(runs) == 12 and {r.group for r in runs} == {"lift_mixed", "lift_cog"}
    r = by_name(runs)["lift_cog/dr3_s2"]
    assert list(r.train_args) == [
        "--preset", "none",
        "--config", str(CFG / "cql_vs_dr3_cog.yaml"), "--task", "lift", "--dataset", "data/lift_cog_48px_50ep.hdf5",
        "--output-dir", "runs/study/cql_vs_dr3/cpu/lift_cog/dr3_s2", "--seed", "2", "--max-steps", "1500",
        "--batch-size", "64", "--model.encoder", "drq", "--log-every", "25", "--checkpoint-every", "500",
        "--eval-every", "500", "--eval-episodes", "20", "--eval-workers", "2", "--resume", "auto",
        "--algo.bc_warmup_steps", "150", "--dr3-coef", "0.01", "--dr3.features", "encoder"]
    m = by_name(runs)["lift_mixed/cql_s0"]
    assert m.train_args[:4] == ("--preset", "none", "--config", str(CFG / "cql_vs_dr3_mixed.yaml"))
    assert m.train_args[-2:] == ("--dr3-coef", "0") and "--algo.bc_warmup_steps" not in m.train_args

    scale, runs = plan(cql_vs_dr3, "--scale", "gpu")
    assert (scale.image_size, scale.max_steps, scale.batch_size, scale.eval_every, scale.eval_episodes) == \
        (84, 100_000, 256, 10_000, 50)
    assert len(runs) == 24  # 2 tasks x 2 kinds x 2 conditions x 3 seeds
    assert [g for g in dict.fromkeys(r.group for r in runs)] == \
        ["lift_mixed", "lift_cog", "pick_place_mixed", "pick_place_cog"]
    p = by_name(runs)["pick_place_cog/cql_s1"]
    assert p.dataset.path == Path("data/pick_place_cog_84px_200ep.hdf5")
    assert p.train_args[-4:] == ("--algo.bc_warmup_steps", "10000", "--dr3-coef", "0")
    # the evaluation cadence never exceeds the steps (a smoke run still evaluates at its end)
    scale, runs = plan(cql_vs_dr3, "--max-steps", "4", "--tasks", "pick_place", "--kinds", "mixed",
                       "--horizon", "10")
    a = runs[0].train_args
    assert len(runs) == 6 and a[a.index("--eval-every") + 1] == "4" and a[a.index("--eval-horizon") + 1] == "10"


def test_sensitivity_runs_and_reports():
    scale, runs = plan(sensitivity, "--scale", "cpu")
    assert scale.seeds == (0, 1)
    assert [r.condition for r in runs[::2]] == ["c0_0_encoder", "c0_0.001_encoder", "c0_0.01_encoder",
                                                "c0_0.1_encoder", "c0_0.01_penultimate"]
    r = by_name(runs)["c0_0.01_penultimate_s1"]
    assert list(r.train_args) == [
        "--preset", "none",
        "--config", str(CFG / "sensitivity.yaml"), "--task", "lift", "--dataset", "data/lift_mixed_48px_50ep.hdf5",
        "--output-dir", "runs/study/sensitivity/cpu/c0_0.01_penultimate_s1", "--seed", "1", "--max-steps", "1500",
        "--batch-size", "64", "--model.encoder", "drq", "--log-every", "25", "--checkpoint-every", "500",
        "--eval-every", "750", "--eval-episodes", "20", "--eval-workers", "2", "--resume", "auto",
        "--dr3-coef", "0.01", "--dr3.features", "penultimate"]
    args = sensitivity.build_parser().parse_args(["--scale", "gpu", "--features-coef", "0.03"])
    scale, runs = sensitivity.plan(args)
    assert len(runs) == 3 * 6  # four sweep values + the encoder run at 0.03 + penultimate at 0.03
    specs, index, _ = sensitivity.reports(args, scale, runs)
    assert index == Path("reports/sensitivity/gpu")
    assert [s.out for s in specs] == [Path("reports/sensitivity/gpu/c0_sweep"),
                                      Path("reports/sensitivity/gpu/features")]
    assert [s.group_by for s in specs] == ["dr3.coef", "dr3.features"]
    assert len(specs[0].runs) == 15 and {r.condition for r in specs[1].runs} == {"c0_0.03_encoder",
                                                                                  "c0_0.03_penultimate"}
    assert "GPU scale: 84x84 images" in specs[0].title


def test_sensitivity_recipe_scale_sweeps_c0_on_the_learning_recipe(monkeypatch):
    from visual_dr3.app.cli_args import parse_train_args

    monkeypatch.delenv("VISUAL_DR3_PRESET", raising=False)
    args = sensitivity.build_parser().parse_args(["--scale", "recipe", "--coefs", "0.001", "0.1", "--no-features"])
    scale, runs = sensitivity.plan(args)
    assert (scale.max_steps, scale.eval_every, scale.eval_episodes, scale.seeds, scale.jobs) == \
        (1000, 250, 50, (1, 2, 3), 2)
    # only the asked c0 values: no run added at --features-coef, no penultimate run
    assert [r.name for r in runs] == ["c0_0.001_encoder_s1", "c0_0.001_encoder_s2", "c0_0.001_encoder_s3",
                                      "c0_0.1_encoder_s1", "c0_0.1_encoder_s2", "c0_0.1_encoder_s3"]
    assert runs[0].dataset.path == Path("data/lift_mixed_48px_50ep.hdf5")
    assert runs[0].out_dir == Path("runs/study/sensitivity/recipe/c0_0.001_encoder_s1")
    # the same command as cql_vs_dr3's recipe-scale dr3 condition, c0 aside
    _, study = plan(cql_vs_dr3, "--scale", "recipe", "--kinds", "mixed", "--conditions", "dr3", "--dr3-coef", "0.1")

    def flags(r):  # the flags without --output-dir and its value
        a = list(r.train_args)
        del a[a.index("--output-dir"):a.index("--output-dir") + 2]
        return a

    dr3_s1 = flags(study[0])
    sens = flags(runs[3])
    assert sens == dr3_s1
    cfg = parse_train_args(list(runs[3].train_args), configs_dir=CONFIGS_DIR)
    assert (cfg.dr3.coef, cfg.dr3.features, cfg.model.actor_encoder, cfg.algo.bc_warmup_steps, cfg.seed) == \
        (0.1, "encoder", "separate_bc", 500, 1)
    specs, index, _ = sensitivity.reports(args, scale, runs)
    assert index == Path("reports/sensitivity/recipe") and [s.out.name for s in specs] == ["c0_sweep"]
    assert "RECIPE scale" in specs[0].title and len(specs[0].runs) == 6


def test_bad_options_are_argparse_errors(capsys):
    for argv in (["--max-steps", "0"], ["--seeds", "1", "1"], ["--scale", "tpu"], ["--jobs", "-1"],
                 ["--findings", "/nonexistent/findings.md"]):
        with pytest.raises(SystemExit) as e:
            sarsa_vs_td.main(argv + ["--dry-run"])
        assert e.value.code == 2, argv


def test_dry_run_prints_commands_and_touches_nothing(tmp_path, capsys):
    code = sarsa_vs_td.main(["--dry-run", "--data-dir", str(tmp_path / "d"), "--out-root", str(tmp_path / "r"),
                             "--report", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert code == 0 and list(tmp_path.iterdir()) == []
    assert "would generate: python -m visual_dr3.data.generate --task lift --kind mixed --episodes 50" in out
    assert out.count(" new: python ") == 4 and "--backup td" in out and "would build from 4 run folders" in out


# -- skip / resume ------------------------------------------------------------------------------------

FAKE_TRAIN = textwrap.dedent('''
    """A stand-in for train.py: writes a run folder, records its argv, exits with --fake-rc after --fake-sleep."""
    import signal, sys, time
    from pathlib import Path
    argv = sys.argv[1:]
    get = lambda k, d=None: argv[argv.index(k) + 1] if k in argv else d
    out = Path(get("--output-dir"))
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    with open(out.parent / "calls.txt", "a") as f:
        f.write(out.name + " " + " ".join(argv) + "\\n")
    (out / "config.yaml").write_text("seed: 0\\n")
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    deadline = time.time() + float(get("--fake-sleep", 0))
    while time.time() < deadline:
        time.sleep(0.02)
    (out / "checkpoints" / "last.ckpt").write_text("x")
    last = int(get("--fake-last-step", int(get("--max-steps")) - 1))
    (out / "metrics.csv").write_text("step,loss\\n" + "".join(f"{s},0.5\\n" for s in range(last + 1)))
    print("fake train done")
    sys.exit(int(get("--fake-rc", 0)))
''')


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr("experiments.plan.TRAIN_PY", script)  # what RunSpec.command runs
    return script


def fake_run(root: Path, name: str, rc: int = 0, sleep: float = 0.0, max_steps: int = 10) -> common.RunSpec:
    out = root / name
    data = common.DatasetSpec("lift", "mixed", 32, 2, root / "data")
    args = ("--output-dir", str(out), "--max-steps", str(max_steps), "--resume", "auto",
            "--fake-rc", str(rc), "--fake-sleep", str(sleep))
    return common.RunSpec(name=name, group="g", condition=name, seed=0, out_dir=out, dataset=data,
                          max_steps=max_steps, train_args=args)


def calls(root: Path) -> list[str]:
    p = root / "calls.txt"
    return [ln.split()[0] for ln in p.read_text().splitlines()] if p.exists() else []


def test_run_state_on_fake_folders(tmp_path):
    d = tmp_path / "r"
    assert common.run_state(d, 10) == "new"
    d.mkdir()
    (d / "train.log").write_text("")
    assert common.run_state(d, 10) == "new"  # a log alone is no run
    (d / "config.yaml").write_text("seed: 0\n")
    assert common.run_state(d, 10) == "partial"
    (d / "experiment.json").write_text(json.dumps({"status": "done", "max_steps": 10}))
    assert common.run_state(d, 10) == "done"
    assert common.run_state(d, 20) == "partial"  # more steps asked for: continue from the checkpoint
    (d / "experiment.json").write_text(json.dumps({"status": "diverged", "max_steps": 10}))
    assert common.run_state(d, 10) == "diverged"
    (d / "experiment.json").write_text("{not json")
    assert common.run_state(d, 10) == "partial"


def test_runner_marks_skips_and_resumes(tmp_path, fake_train, capsys):
    root = tmp_path / "runs"
    runs = [fake_run(root, "ok"), fake_run(root, "div", rc=3), fake_run(root, "bad", rc=1)]
    res = common.Runner(runs).run_all()
    assert [r.status for r in res] == ["done", "diverged", "failed (exit 1)"]
    assert calls(root) == ["ok", "div", "bad"]
    assert json.loads((root / "ok" / "experiment.json").read_text())["status"] == "done"
    assert json.loads((root / "div" / "experiment.json").read_text())["max_steps"] == 10
    assert not (root / "bad" / "experiment.json").exists()
    assert "fake train done" in (root / "ok" / "train.log").read_text()
    assert common.summarize(res) == 1
    # second pass: the finished and diverged runs are skipped, the failed one is resumed (--resume auto)
    runs[2] = fake_run(root, "bad", rc=0)
    res = common.Runner(runs).run_all()
    assert [r.status for r in res] == ["skipped-done", "skipped-diverged", "done"]
    assert calls(root) == ["ok", "div", "bad", "bad"]
    line = (root / "calls.txt").read_text().splitlines()[-1]
    assert "--resume auto" in line
    assert common.summarize(res) == 0
    out = capsys.readouterr().out
    assert "skip" in out and "resume" in out and "== study summary ==" in out


def test_runner_parallel_jobs_and_sigterm_stops_scheduling(tmp_path, fake_train):
    root = tmp_path / "runs"
    runs = [fake_run(root, f"r{i}", sleep=0.3) for i in range(4)]
    res = common.Runner(runs, jobs=2).run_all()
    assert [r.status for r in res] == ["done"] * 4
    # a signal while runs are going: forwarded to the running train.py (exit 143), nothing new starts
    root2 = tmp_path / "runs2"
    runs = [fake_run(root2, f"s{i}", sleep=30) for i in range(3)]
    runner = common.Runner(runs, jobs=1)
    threading.Timer(1.5, runner.signal_children, args=(signal.SIGTERM,)).start()
    t0 = time.time()
    res = runner.run_all()
    assert time.time() - t0 < 15
    assert [r.status for r in res] == ["stopped", "not started", "not started"]
    assert not (root2 / "s0" / "experiment.json").exists()
    assert common.run_state(root2 / "s0", 10) == "partial"
    assert common.summarize(res) == 1


def test_runner_does_not_mark_done_a_run_that_exited_0_short_of_max_steps(tmp_path, fake_train):
    # a second signal during a clean stop can end train.py with 0 before its last step: resume it, never skip it
    root = tmp_path / "runs"
    run = fake_run(root, "short")
    run = dataclasses.replace(run, train_args=(*run.train_args, "--fake-last-step", "3"))
    res = common.Runner([run]).run_all()
    assert [r.status for r in res] == ["stopped"]
    assert last_logged_step(root / "short") == 3
    assert not (root / "short" / "experiment.json").exists()
    assert common.run_state(root / "short", 10) == "partial"
    res = common.Runner([fake_run(root, "short")]).run_all()  # the next pass resumes and finishes it
    assert [r.status for r in res] == ["done"] and calls(root) == ["short", "short"]


# -- end to end: the probe through its real CLI ---------------------------------------------------------

@pytest.mark.slow
def test_probe_end_to_end_tiny(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    argv = [sys.executable, str(ROOT / "experiments" / "sarsa_vs_td.py"), "--seeds", "0", "--image-size", "32",
            "--episodes", "2", "--horizon", "20", "--max-steps", "4", "--batch-size", "8", "--jobs", "2",
            "--data-dir", "data", "--out-root", "runs", "--report", "rep",
            "--train-args", "--model.feature_dim 32 --model.hidden_dims [32,32] --log-every 1"]
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert (tmp_path / "data" / "lift_mixed_32px_2ep_h20.hdf5").is_file()
    for name, backup in (("sarsa_s0", "sarsa"), ("td_s0", "td")):
        d = tmp_path / "runs" / name
        for f in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "train.log", "experiment.json"):
            assert (d / f).is_file(), (name, f)
        cfg = (d / "config.yaml").read_text()
        assert f"backup: {backup}" in cfg and "min_q_weight: 0.0" in cfg and "bc_warmup_steps: 4" in cfg
        assert json.loads((d / "experiment.json").read_text())["status"] == "done"
    page = (tmp_path / "rep" / "index.md").read_text()
    assert "SARSA vs TD probe on lift/mixed (CPU scale: 32x32 images" in page
    assert "algo.backup=sarsa" in page and "algo.backup=td" in page
    assert (tmp_path / "rep" / "dr3_dot.png").is_file() and (tmp_path / "rep" / "srank.png").is_file()
    assert "== study summary ==" in r.stdout and "2 done" in r.stdout
    assert "## Findings" not in page
    # the same command again skips both runs and rebuilds the report, now with the author's findings on top
    (tmp_path / "findings.md").write_text("Four steps show nothing yet.\n")
    r = subprocess.run(argv + ["--findings", "findings.md"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("skip runs/") == 2 and "2 skipped-done" in r.stdout
    page = (tmp_path / "rep" / "index.md").read_text()
    assert page.index("## Findings\n\nFour steps show nothing yet.\n") < page.index("## Setup")
    assert "--group-by algo.backup --findings findings.md\n```" in page  # the command regenerates it whole


@pytest.mark.parametrize("module", [sarsa_vs_td, cql_vs_dr3, sensitivity])
@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_every_condition_parses_with_train_py_parser(module, scale):
    """train.py's own parser (defaults < configs/<task>.yaml < --config < flags) accepts each condition's
    command and gives the intended config."""
    from visual_dr3.app.cli_args import parse_train_args

    _, runs = plan(module, "--scale", scale)
    seen = {}
    for r in runs:
        seen.setdefault((r.group, r.condition), r)
    for (group, cond), r in seen.items():
        cfg = parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR)
        assert cfg.max_steps == r.max_steps and cfg.seed == r.seed and cfg.wandb == "off" and not cfg.progress
        assert cfg.output_dir == str(r.out_dir) and cfg.resume == "auto"
        assert cfg.batch_size == (64 if scale == "cpu" else 256)
        if module is sarsa_vs_td:
            assert (cfg.algo.backup, cfg.cql.min_q_weight, cfg.dr3.coef) == (cond, 0.0, 0.0)
            assert cfg.algo.bc_warmup_steps == cfg.max_steps and cfg.eval_every == 0
        elif module is cql_vs_dr3:
            assert cfg.cql.min_q_weight == 1.0 and cfg.dr3.coef == (0.0 if cond == "cql" else 0.01)
            assert cfg.eval_every > 0 and cfg.eval_episodes >= 20
            if group.endswith("_cog"):
                assert [(s.filter_key, s.weight) for s in cfg.data.sources] == [("prior", 0.5), ("task", 0.5)]
                assert cfg.algo.bc_warmup_steps == cfg.max_steps // 10
            else:
                assert [(s.filter_key, s.weight) for s in cfg.data.sources] == [(None, None)]
                assert cfg.algo.bc_warmup_steps == 0
        else:
            coef, feats = cond.split("_")[1:]
            assert (cfg.dr3.coef, cfg.dr3.features) == (float(coef), feats) and cfg.cql.min_q_weight == 1.0


def test_gripper_labels_counts_open_finger_frames_and_their_close_share_per_height_band():
    import numpy as np

    from experiments.gripper_labels import label_table

    height = np.array([-1.0, -0.2, -0.1, 0.2, 0.3, 0.3, 2.0])
    finger = np.array([0.030, 0.039, 0.039, 0.039, 0.039, 0.020, 0.039])  # the 6th frame is closing: not open
    gripper = np.array([1.0, 1.0, -1.0, -1.0, -1.0, 1.0, -1.0])
    rows = label_table(height, finger, gripper, open_finger=0.0385, bands=((-1.5, -0.8), (-0.4, 0.0), (0.0, 0.5)))
    assert [(r["n_open"], r["n_all"]) for r in rows] == [(0, 1), (2, 2), (2, 3)]
    assert np.isnan(rows[0]["close_share"]) and rows[1]["close_share"] == 0.5 and rows[2]["close_share"] == 0.0


def test_cql_vs_dr3_recipe_scale_runs_the_preset_with_every_dr3_layer(monkeypatch):
    from visual_dr3.app.cli_args import parse_train_args

    monkeypatch.delenv("VISUAL_DR3_PRESET", raising=False)
    scale, runs = plan(cql_vs_dr3, "--scale", "recipe", "--kinds", "mixed", "--conditions", "cql", "dr3", "dr3_pen",
                       "dr3_both", "dr3_detach", "dr3_kl", "dr3_pen_kl", "dr3_both_kl", "bc")
    assert (scale.max_steps, scale.eval_every, scale.eval_episodes, scale.seeds, scale.jobs) == \
        (1000, 250, 50, (1, 2, 3), 2)
    assert len(runs) == 27 and runs[0].train_args[:4] == ("--preset", "cpu", "--config", str(CFG / "learn_to_grasp.yaml"))
    got = {r.condition: parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR) for r in runs if r.seed == 2}
    assert {c: cfg.algorithm for c, cfg in got.items()} == {c: "bc" if c == "bc" else "cql" for c in got}
    got.pop("bc")
    assert {c: (cfg.dr3.coef, cfg.dr3.features, cfg.dr3.detach_next, cfg.kl.coef) for c, cfg in got.items()} == {
        "cql": (0.0, "encoder", False, 0.0), "dr3": (0.01, "encoder", False, 0.0),
        "dr3_pen": (0.01, "penultimate", False, 0.0), "dr3_both": (0.01, "both", False, 0.0),
        "dr3_detach": (0.01, "encoder", True, 0.0), "dr3_kl": (0.01, "encoder", False, 1.0),
        "dr3_pen_kl": (0.01, "penultimate", False, 1.0), "dr3_both_kl": (0.01, "both", False, 1.0)}
    # the preset's recipe (its warm-up, backup, steps) with the imitation-trained actor encoder on every run
    for cfg in got.values():
        assert (cfg.model.actor_encoder, cfg.algo.bc_warmup_steps, cfg.algo.backup, cfg.max_steps, cfg.eval_episodes) \
            == ("separate_bc", 500, "sarsa", 1000, 50)


def test_stitch_benchmark_runs_every_condition_on_the_recipe(monkeypatch):
    from experiments import stitch
    from visual_dr3.app.cli_args import parse_train_args

    monkeypatch.delenv("VISUAL_DR3_PRESET", raising=False)
    scale, runs = plan(stitch)
    assert (scale.name, scale.max_steps, scale.eval_every, scale.eval_episodes, scale.seeds, scale.episodes) == \
        ("recipe", 1000, 250, 50, (1, 2, 3), 100)
    assert len(runs) == 27 and {r.dataset.path.name for r in runs} == {"lift_stitch_48px_100ep.hdf5"}
    assert runs[0].dataset.kind == "stitch"
    got = {r.condition: parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR) for r in runs if r.seed == 1}
    assert {c: (cfg.algorithm, cfg.algo.bc_filter, cfg.algo.backup, cfg.dr3.coef, cfg.dr3.features, cfg.kl.coef)
            for c, cfg in got.items()} == {
        "bc": ("bc", None, "sarsa", 0.01, "encoder", 0.0),
        "bc_filtered": ("bc", "success", "sarsa", 0.01, "encoder", 0.0),
        "sarsa": ("cql", None, "sarsa", 0.01, "encoder", 0.0),
        "sarsa_kl": ("cql", None, "sarsa", 0.01, "encoder", 1.0),
        "td": ("cql", None, "td", 0.0, "penultimate", 0.0),  # (c0 0: the layer does nothing)
        "td_dr3": ("cql", None, "td", 0.01, "encoder", 0.0),
        "td_dr3_pen": ("cql", None, "td", 0.01, "penultimate", 0.0),
        "td_kl": ("cql", None, "td", 0.0, "penultimate", 1.0),
        "td_dr3_pen_kl": ("cql", None, "td", 0.01, "penultimate", 1.0)}
    for c, cfg in got.items():  # the td conditions run the TD recipe (visual_dr3/configs/td.yaml), the others not
        td = c.startswith("td")
        assert (cfg.algo.target_encoder, cfg.algo.target_action, cfg.cql.min_q_weight, cfg.cql.gap_floor) == \
            ((True, "mean", 0.1, 0.0) if td else (False, "sample", 1.0, None)), c
    for cfg in got.values():  # the recipe: its warm-up and steps, the imitation-trained actor encoder
        assert (cfg.model.actor_encoder, cfg.algo.bc_warmup_steps, cfg.max_steps, cfg.task) == \
            ("separate_bc", 500, 1000, "lift")
        assert [(x.filter_key, x.weight) for x in cfg.data.sources] == [(None, None)]  # uniform over the file

    # --sampling cog: every condition draws half its batch from mask/prior, half from mask/task, in its own folders
    args = stitch.build_parser().parse_args(["--sampling", "cog", "--conditions", "td", "bc", "--seeds", "1"])
    scale, runs = stitch.plan(args)
    assert [r.condition for r in runs] == ["td_cog", "bc_cog"]
    assert runs[0].out_dir == Path("runs/study/stitch/recipe/lift_stitch/td_cog_s1")
    assert stitch.reports(args, scale, runs)[0][0].out == Path("reports/stitch/recipe_cog")
    for r in runs:
        cfg = parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR)
        assert [(x.filter_key, x.weight) for x in cfg.data.sources] == [("prior", 0.5), ("task", 0.5)]
    td = parse_train_args(list(runs[0].train_args), configs_dir=CONFIGS_DIR)
    assert (td.algo.backup, td.algo.target_encoder, td.cql.min_q_weight, td.dr3.coef) == ("td", True, 0.1, 0.0)


def test_index_page_has_each_reports_table_and_its_differences(tmp_path):
    from types import SimpleNamespace

    from experiments.reports import ReportSpec, build_reports
    from test_report import make_run

    rows = [(10, 1.0, 5, 0.1, 1.0)]
    dirs = [make_run(tmp_path / "runs", f"{c}_s{s}", s, coef, "td", rows, evals=[(10, k, 10)])
            for c, coef, per in (("cql", 0.0, (2, 3)), ("dr3", 0.01, (9, 8))) for s, k in zip((1, 2), per)]
    rep = ReportSpec(out=tmp_path / "rep" / "lift_mixed", title="lift / mixed",
                     runs=tuple(SimpleNamespace(out_dir=d) for d in dirs), name="lift / mixed")
    (tmp_path / "f.md").write_text("DR3 ahead on both seeds.\n")
    pages = build_reports([rep], index=tmp_path / "rep", index_title="Study", findings=tmp_path / "f.md")
    index = (tmp_path / "rep" / "index.md").read_text()
    assert pages[-1] == tmp_path / "rep" / "index.md"
    assert index.index("## Findings\n\nDR3 ahead on both seeds.") < index.index("## lift / mixed")
    assert "| dr3.coef=0.0 | 2 (1,2) |" in index and "- C2: dr3.coef=0.01" in index
    # 17/20 against 5/20: +0.600, every seed up
    assert "| C2 - C1 | +0.600 [+" in index and "(+7/+5) **higher** |" in index
    assert "## Differences in success" in (tmp_path / "rep" / "lift_mixed" / "index.md").read_text()


def test_a_config_in_train_args_layers_under_the_condition_flags(monkeypatch):
    """--train-args "--config td" (the TD recipe sets DR3 on the penultimate layer): each condition still means
    what its flags say, dr3 the encoder form and dr3_pen the penultimate one; other --train-args flags still win."""
    from visual_dr3.app.cli_args import parse_train_args

    monkeypatch.delenv("VISUAL_DR3_PRESET", raising=False)
    _, runs = plan(cql_vs_dr3, "--scale", "recipe", "--kinds", "mixed", "--seeds", "1", "--conditions", "cql", "dr3",
                   "dr3_pen", "dr3_pen_kl", "--train-args", "--config td --algo.awr_beta 0.3")
    got = {r.condition: parse_train_args(list(r.train_args), configs_dir=CONFIGS_DIR) for r in runs}
    assert {c: (cfg.algo.backup, cfg.dr3.coef, cfg.dr3.features, cfg.kl.coef, cfg.algo.awr_beta)
            for c, cfg in got.items()} == {
        "cql": ("td", 0.0, "penultimate", 0.0, 0.3), "dr3": ("td", 0.01, "encoder", 0.0, 0.3),
        "dr3_pen": ("td", 0.01, "penultimate", 0.0, 0.3), "dr3_pen_kl": ("td", 0.01, "penultimate", 1.0, 0.3)}
    from experiments.plan import split_configs
    assert split_configs(["--config", "a", "--x", "1", "--config=b"]) == (["--config", "a", "--config=b"],
                                                                          ["--x", "1"])
