"""Safe to load what others send you (issue 37): a crafted checkpoint runs nothing in any command that takes one,
bad values in a dataset are refused naming the demo and step, and truncated or altered files (a dataset, a
checkpoint) are one line and exit 2, never a traceback or a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import run_main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model.feature_dim", "16", "--model.hidden_dims", "[16,16]", "--cql.num_actions", "2",
         "--wandb", "off", "--progress", "false", "--batch-size", "8"]


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")


class RunsAShellCommand:
    """Unpickling this runs ``touch <marker>`` (what a malicious checkpoint would do, less harmfully)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def checkpoint(lift_dataset, tmp_path_factory):
    """A real 2-step checkpoint of train.py."""
    out = tmp_path_factory.mktemp("safe_ckpt") / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset", str(lift_dataset),
                        "--max-steps", "2", "--output-dir", str(out), *SMALL], cwd=out.parent, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture
def evil(tmp_path):
    """A torch.save'd checkpoint (our layout around it) whose unpickling would create ``marker``."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "global_step": 0,
                "visual_dr3": {"config": RunsAShellCommand(marker)}}, path)
    assert not marker.exists()
    return path, marker


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def assert_refused(r, path, marker):
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-3000:])
    line = one_error_line(r.stderr)
    assert f"{path}: refused, it holds 'posix.system'" in line and "nothing of it was run" in line, line
    assert "--trust-this-file" in line
    assert not marker.exists()


@pytest.mark.slow
def test_crafted_checkpoint_runs_nothing_in_eval(evil, tmp_path):
    path, marker = evil
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--checkpoint", str(path), "--episodes", "1"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert_refused(r, path, marker)


@pytest.mark.slow
def test_crafted_checkpoint_runs_nothing_in_train_resume(evil, lift_dataset, tmp_path):
    from visual_dr3.app.train import main as train_main

    path, marker = evil
    out = tmp_path / "run"
    args = ["--task", "lift", "--dataset", str(lift_dataset), "--max-steps", "2", "--output-dir", str(out), *SMALL]
    code, err = run_main(train_main, args + ["--resume", str(path)])  # in-process; the script below
    assert code == 2 and f"--resume {path}: refused, it holds 'posix.system'" in one_error_line(err)
    # --resume auto picks up a last.ckpt someone put in the run folder: the same reader refuses it
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(path.read_bytes())
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--resume", "auto"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert_refused(r, out / "checkpoints" / "last.ckpt", marker)


def test_crafted_checkpoint_runs_nothing_in_the_other_tools(evil):
    from experiments.grasp_trace import main as grasp_trace
    from visual_dr3.app.convert_checkpoint import main as convert
    from visual_dr3.checkpoint import read_checkpoint
    from visual_dr3.errors import UserError
    from visual_dr3.learner.resume import AtomicCheckpointIO

    path, marker = evil
    code, err = run_main(grasp_trace, ["--checkpoint", str(path), "--episodes", "1"])
    assert code == 2 and "refused, it holds 'posix.system'" in one_error_line(err)
    code, err = run_main(convert, [str(path), str(path.with_name("out.ckpt"))])  # without --trust-this-file
    assert code == 2 and "--trust-this-file" in one_error_line(err)
    with pytest.raises(UserError, match="refused"):  # what Lightning calls to restore a --resume
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(UserError, match="refused"):
        read_checkpoint(path, mmap=True)  # train.py --resume's compatibility check
    assert not marker.exists()
    assert not path.with_name("out.ckpt").exists()


def test_numpy_values_load_and_the_converter_makes_a_trusted_file_safe(checkpoint, tmp_path):
    from visual_dr3.app.convert_checkpoint import main as convert
    from visual_dr3.checkpoint import read_checkpoint

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # what older runs and other tools store: numpy arrays, scalars, RNG state tuples
    ck["visual_dr3"]["extra"] = {"a": np.arange(3), "f": np.float64(2.5), "rng": np.random.get_state()}
    torch.save(ck, tmp_path / "np.ckpt")
    got = read_checkpoint(tmp_path / "np.ckpt")["visual_dr3"]["extra"]
    assert got["f"] == 2.5 and np.array_equal(got["a"], np.arange(3)) and got["rng"][0] == "MT19937"
    # a checkpoint holding an object of some class (a trusted colleague's): refused, converted on request
    ck["visual_dr3"]["extra"] = {"where": Path("/data/x.hdf5"), "d": _Dict(a=1)}
    torch.save(ck, tmp_path / "old.ckpt")
    with pytest.raises(Exception, match=r"refused, it holds .*pathlib"):
        read_checkpoint(tmp_path / "old.ckpt")
    code, err = run_main(convert, ["--trust-this-file", str(tmp_path / "old.ckpt"), str(tmp_path / "new.ckpt")])
    assert code == 0, err
    new = read_checkpoint(tmp_path / "new.ckpt")
    assert new["visual_dr3"]["extra"] == {"where": "/data/x.hdf5", "d": {"a": 1}}
    assert torch.equal(new["state_dict"]["critic_log_alpha"] if "critic_log_alpha" in new["state_dict"]
                       else next(iter(new["state_dict"].values())),
                       ck["state_dict"]["critic_log_alpha"] if "critic_log_alpha" in ck["state_dict"]
                       else next(iter(ck["state_dict"].values())))


def test_a_checkpoint_of_the_previous_version_resumes(checkpoint, lift_dataset, tmp_path):
    """Before issue 37 the optimizer was foreach Adam: its groups come back with ``fused=None``; the resumed run
    switches to fused Adam (which the divergence guard needs) and goes on."""
    from visual_dr3.app.train import main as train_main

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for group in ck["optimizer_states"][0]["param_groups"]:
        group["fused"], group["foreach"] = None, None
    old = tmp_path / "old.ckpt"
    torch.save(ck, old)
    out = tmp_path / "run"
    code, err = run_main(train_main, ["--task", "lift", "--dataset", str(lift_dataset), "--max-steps", "3",
                                      "--output-dir", str(out), "--resume", str(old), *SMALL])
    assert code == 0, err[-3000:]
    new = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert new["global_step"] == 3
    assert all(g["fused"] for g in new["optimizer_states"][0]["param_groups"])


class _Dict(dict):
    pass


# --- datasets: values -------------------------------------------------------------------------------------


def _tampered(src: Path, dst: Path, edit) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


@pytest.mark.parametrize("key, index, value, needle", [
    ("data/demo_1/rewards", (3,), np.nan, "data/demo_1/rewards holds NaN/inf (first at step 3)"),
    ("data/demo_0/rewards", (5,), -np.inf, "data/demo_0/rewards holds NaN/inf (first at step 5)"),
    ("data/demo_2/dones", (4,), 7, "data/demo_2/dones holds 7.0 at step 4; expected 0 or 1"),
    ("data/demo_1/obs/robot0_eef_pos", (6, 1), np.inf,
     "data/demo_1/obs/robot0_eef_pos holds NaN/inf (first at step 6)"),
    ("data/demo_0/obs/robot0_gripper_qpos", (2, 0), np.nan,
     "data/demo_0/obs/robot0_gripper_qpos holds NaN/inf (first at step 2)"),
    ("data/demo_2/actions", (1, 2), np.nan, "data/demo_2/actions holds NaN/inf (first at step 1)"),
])
def test_non_finite_values_are_refused_naming_demo_and_step(lift_dataset, tmp_path, key, index, value, needle):
    from visual_dr3.data.check import main as check

    def edit(f):
        ds = f[key]
        arr = ds[()]
        arr[index] = value
        ds[...] = arr

    bad = _tampered(lift_dataset, tmp_path / "bad.hdf5", edit)
    code, err = run_main(check, [str(bad)])
    assert code == 2 and needle in one_error_line(err) and str(bad) in err, err


def test_dataset_attributes_are_parsed_as_json_data_only(lift_dataset, tmp_path):
    from visual_dr3.data.check import main as check

    def edit(f):  # a Python expression instead of JSON: refused, never evaluated
        f["data"].attrs["env_args"] = f"__import__('os').system('touch {tmp_path / 'marker'}')"

    bad = _tampered(lift_dataset, tmp_path / "bad.hdf5", edit)
    code, err = run_main(check, [str(bad)])
    assert code == 2 and "data.attrs['env_args'] is not valid JSON" in one_error_line(err)
    assert not (tmp_path / "marker").exists()
    code, err = run_main(check, [str(lift_dataset)])
    assert code == 0, err


# --- the corrupt-file sweep ---------------------------------------------------------------------------------


def _cases(data: bytes):
    """20 truncations and 20 single-byte flips, spread evenly over the file (first and last bytes included)."""
    n = len(data)
    for i in range(20):
        yield f"truncated at {n * i // 20}", data[: n * i // 20]
    for i in range(20):
        off = min(n - 1, n * i // 19)
        flipped = bytearray(data)
        flipped[off] ^= 0xFF
        yield f"byte {off} flipped", bytes(flipped)


def _same_content(a: Path, b: Path) -> bool:
    """Every dataset and attribute of HDF5 files ``a`` and ``b`` reads the same (a flip in free space)."""
    def content(path):
        out = {}
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                out[name] = ({k: str(v) for k, v in obj.attrs.items()},
                             obj[()].tobytes() if isinstance(obj, h5py.Dataset) else None)
            visit("/", f)
            f.visititems(visit)
        return out
    return content(a) == content(b)


def _sweep(main, argv_for, original: Path, tmp_path: Path, harmless=None):
    bad = tmp_path / f"bad{original.suffix}"
    failures = []
    for what, data in _cases(original.read_bytes()):
        bad.write_bytes(data)
        code, err = run_main(main, argv_for(bad))
        if code == 0 and harmless is not None and harmless(original, bad):
            continue  # the byte was in space no reader uses: the file reads exactly as the original
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if code != 2 or len(lines) != 1 or not lines[0].startswith(f"error: ") or str(bad) not in lines[0]:
            failures.append((what, code, err[-300:]))
    assert not failures, failures


def test_corrupt_checkpoint_sweep_is_one_line_exit_2(checkpoint, tmp_path):
    from visual_dr3.app.eval import main as eval_main

    _sweep(eval_main, lambda p: ["--checkpoint", str(p), "--episodes", "1", "--no-progress"], checkpoint, tmp_path)


def test_corrupt_dataset_sweep_is_one_line_exit_2(lift_dataset, tmp_path):
    from visual_dr3.data.check import main as check

    _sweep(check, lambda p: [str(p)], Path(lift_dataset), tmp_path, harmless=_same_content)


@pytest.mark.slow
def test_corrupt_dataset_through_the_script(lift_dataset, tmp_path):
    """The process boundary (eval.py's is crossed by the crafted-checkpoint test): a truncated dataset to train.py."""
    (tmp_path / "cut.hdf5").write_bytes(Path(lift_dataset).read_bytes()[: os.path.getsize(lift_dataset) // 2])
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "lift", "--dataset",
                        str(tmp_path / "cut.hdf5"), "--max-steps", "2", "--output-dir", str(tmp_path / "run"),
                        *SMALL], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "truncated" in one_error_line(r.stderr), r.stderr[-2000:]


def test_yaml_config_is_read_with_a_safe_loader(lift_dataset, tmp_path):
    from visual_dr3.app.train import main as train_main

    marker = tmp_path / "marker"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    code, err = run_main(train_main, ["--task", "lift", "--dataset", str(lift_dataset), "--config", str(cfg),
                                      "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "python/object/apply:os.system" in one_error_line(err)
    assert not marker.exists() and not (tmp_path / "run").exists()
