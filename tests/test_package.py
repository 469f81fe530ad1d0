"""The package as a user installs it: a non-editable ``pip install`` into a fresh venv, then the console scripts
run from an empty folder elsewhere (datasets and runs land there, nothing is written into site-packages)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = ["--batch-size", "8", "--model.feature_dim", "16", "--model.hidden_dims", "[16,16]",
         "--cql.num_actions", "2", "--wandb", "off", "--progress", "false"]


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with visual-dr3 installed from a copy of the source tree (wheel build, not editable). Its
    dependencies come from this interpreter's site-packages through a .pth file: nothing is downloaded."""
    base = tmp_path_factory.mktemp("pkg")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "visual_dr3", src / "visual_dr3", ignore=shutil.ignore_patterns("__pycache__"))
    v = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True)
    py = v / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_deps.pth").write_text("\n".join(deps) + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--no-build-isolation", "--quiet", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return v, site


def test_installed_console_scripts_train_and_evaluate_from_an_empty_folder(venv, tmp_path):
    v, site = venv
    env = {k: val for k, val in os.environ.items() if k not in ("PYTHONPATH", "VISUAL_DR3_DATA_ROOT")}
    env.update(PYTHONUNBUFFERED="1", WANDB_SILENT="true")

    def run(cmd, *args, timeout=300):
        return subprocess.run([str(v / "bin" / cmd), *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    where = subprocess.run([str(v / "bin" / "python"), "-c", "import visual_dr3; print(visual_dr3.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert Path(where.stdout.strip()) == site / "visual_dr3" / "__init__.py"  # the installed copy, not the repo
    def presets(pkg: Path) -> list[str]:
        return sorted(str(p.relative_to(pkg / "configs")) for p in (pkg / "configs").rglob("*.yaml"))

    assert presets(site / "visual_dr3") == presets(ROOT / "visual_dr3") and "cpu/lift.yaml" in presets(ROOT / "visual_dr3")
    before = _tree(site)

    for cmd in ("visual-dr3-generate", "visual-dr3-report"):
        r = run(cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: {cmd}"), r.stderr[-2000:]

    # the default dataset is generated under the working directory; the run folder is runs/lift there
    r = run("visual-dr3-train", "--task", "lift", "--preset", "cpu", "--data.episodes", "1", "--data.image_size",
            "32", "--max-steps", "3", "--eval-every", "0", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    data = tmp_path / "data" / "lift_expert_32px_1ep.hdf5"  # kind expert: the cpu preset's (cpu/lift.yaml)
    assert data.is_file() and f"dataset          {data}" in r.stdout
    cfg = yaml.safe_load((tmp_path / "runs" / "lift" / "config.yaml").read_text())
    assert (cfg["preset"], cfg["max_steps"], cfg["data"]["kind"]) == ("cpu", 3, "expert")
    ckpt = tmp_path / "runs" / "lift" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    # one spawned env worker (it re-imports the console script that started it)
    r = run("visual-dr3-eval", "--checkpoint", "runs/lift/checkpoints/last.ckpt", "--episodes", "1", "--workers", "1",
            "--horizon", "8", "--video", "videos", "--json", "eval.json", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert rep["global_step"] == 3 and rep["episodes"] == 1 and rep["records"][0]["length"] == 8
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000

    assert _tree(site) == before  # nothing written into the installed package (no data/, runs/, pycache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "eval.json", "runs", "videos"]
