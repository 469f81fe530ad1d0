"""The prepared GPU check: the CUDA tests, the GPU benchmark grid and a short GPU training + evaluation run, with
every figure in one JSON and one markdown table. A lent GPU's time is short and counted from its start, so this
is one command, ready before any GPU is lent, that fits in 8 minutes:

    bash scripts/gpu_check.sh --out gpu_check            # install as the README says, then this module
    python -m benchmarks.gpu_check --out gpu_check         # (already installed) the steps below
    python -m benchmarks.gpu_check --dry --out /tmp/gc     # on a CPU: every step at tiny sizes (CI runs this)

Steps, each in a subprocess with its own time limit (a step that fails or runs out of time is recorded and the
next one still runs):

1. ``cuda_tests``: ``python -m pytest -m cuda`` (the tests marked ``cuda``; skipped without a CUDA device).
2. ``grid``: ``python -m benchmarks --device cuda --only scaling``: steps/s and MFU at batch 256 and 1024,
   drq and resnet18, fp32 and bf16, compile off and on (and DDP efficiency with more than one GPU).
3. ``train_eval``: a short learning run of the GPU preset: 100 expert lift demos at 84x84 generated on the
   machine, then ``train.py --preset gpu`` (the task's method at the GPU's scale) with its schedule cut to 2,000
   steps (the behaviour-cloning warm-up to the first 1,000, as the preset's half), 50 evaluation episodes at steps
   1,000 (the warm-up's end) and 2,000 (after RL): steps/s of the real run, success at each evaluation and
   evaluation env steps/s.

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (and each step's log). ``--dry`` runs the same
steps on the CPU at tiny sizes: it proves the commands, the parsing and the report, not any figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    """What each step runs: the GPU sizes, or the dry run's tiny ones."""

    device: str
    grid_args: tuple
    gen_args: tuple
    train_args: tuple
    limits: dict = field(default_factory=dict)  # step -> seconds


GPU = Sizes(
    device="cuda",
    grid_args=("--device", "cuda", "--only", "scaling", "--warmup", "5", "--block", "10", "--reps", "3"),
    gen_args=("--episodes", "100", "--image-size", "84", "--kind", "expert", "--workers", "8"),
    # the GPU preset with fewer steps: everything else (method, batch 256, images) is the preset's
    train_args=("--preset", "gpu", "--max-steps", "2000", "--algo.bc_warmup_steps", "1000", "--eval-every", "1000",
                "--eval-episodes", "50", "--eval-workers", "8", "--log-every", "250", "--checkpoint-every", "1000",
                "--data.device", "auto", "--precision", "bf16-mixed"),  # auto: the dataset on the GPU when it fits
    limits={"cuda_tests": 90, "grid": 180, "train_eval": 300},
)
DRY = Sizes(
    device="cpu",
    grid_args=("--device", "cpu", "--only", "scaling", "--quick", "--scaling-on-cpu", "--grid-configs", "1",
               "--warmup", "1", "--block", "1", "--reps", "2"),
    gen_args=("--episodes", "2", "--image-size", "32", "--kind", "expert", "--workers", "1", "--horizon", "30"),
    train_args=("--preset", "gpu", "--max-steps", "4", "--algo.bc_warmup_steps", "2", "--batch-size", "8",
                "--eval-every", "2", "--eval-episodes", "2",
                "--eval-workers", "1", "--eval-horizon", "5", "--log-every", "2", "--model.feature_dim", "32",
                "--model.hidden_dims", "[32, 32]", "--cql.num_actions", "2"),
    limits={"cuda_tests": 120, "grid": 240, "train_eval": 240},
)


@dataclass
class StepResult:
    name: str
    status: str  # ok | failed | timed out
    seconds: float
    figures: dict
    log: str  # the step's log file (stdout and stderr)
    command: str


def _run(name: str, cmds: Sequence[Sequence[str]], out: Path, limit: float) -> tuple[str, float, str]:
    """Run ``cmds`` one after the other under one time limit; (status, seconds, combined output)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    t0, text, status = time.perf_counter(), [], "ok"
    for cmd in cmds:
        left = limit - (time.perf_counter() - t0)
        try:
            p = subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=max(left, 1))
            text.append(f"$ {' '.join(cmd)}\n{p.stdout}{p.stderr}")
            if p.returncode != 0:
                status = "failed"
                break
        except subprocess.TimeoutExpired as e:
            part = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            text.append(f"$ {' '.join(cmd)}\n{part}\n[timed out after {limit:.0f} s]")
            status = "timed out"
            break
    log = "\n".join(text)
    (out / f"{name}.log").write_text(log)
    return status, time.perf_counter() - t0, log


def cuda_tests_command() -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-n", "0", "-p", "no:cacheprovider", "tests"]


def parse_cuda_tests(log: str) -> dict:
    """pytest's closing counts (``3 passed, 1 skipped, 400 deselected``) as ``{"passed": 3, ...}``."""
    return {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", log)}


def cuda_tests(out: Path, sizes: Sizes) -> StepResult:
    cmd = cuda_tests_command()
    status, secs, log = _run("cuda_tests", [cmd], out, sizes.limits["cuda_tests"])
    return StepResult("cuda_tests", status, secs, parse_cuda_tests(log), str(out / "cuda_tests.log"),
                      " ".join(cmd[1:]))


def grid_command(sizes: Sizes, js: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks", *sizes.grid_args, "--json", str(js)]


def parse_grid(log: str, js: Path) -> list[dict]:
    """The grid's rows: from its JSON, or (a run cut short) from the ``[scaling] ...`` lines it printed."""
    rows = json.loads(js.read_text())["rows"] if js.is_file() else []
    if not rows:
        rows = [{"case": "scaling", "measure": m, "value": float(v), "unit": "steps/s", "note": n}
                for m, v, n in re.findall(r"\[scaling\] (.+?): ([0-9.e+-]+) steps/s; (.*)", log)]
    return rows


def grid(out: Path, sizes: Sizes) -> StepResult:
    js = out / "grid.json"
    cmd = grid_command(sizes, js)
    status, secs, log = _run("grid", [cmd], out, sizes.limits["grid"])
    return StepResult("grid", status, secs, {"rows": parse_grid(log, js)}, str(out / "grid.log"), " ".join(cmd[1:]))


def train_eval_commands(sizes: Sizes, data: Path, run: Path) -> tuple[list[str], list[str]]:
    """(dataset generation, training with an evaluation at the end)."""
    gen = [sys.executable, "-m", "visual_dr3.data.generate", "--task", "lift", *sizes.gen_args, "--out", str(data)]
    train = [sys.executable, "train.py", "--task", "lift", "--dataset", str(data), "--output-dir", str(run),
             "--wandb", "off", "--progress", "false", *sizes.train_args]
    return gen, train


def parse_train_eval(log: str, run: Path) -> dict:
    """Training steps/s and seconds from train.py's summary; success at each evaluation (``success_at``) and at
    the last, and env steps/s of the last evaluation."""
    figures: dict = {}
    m = re.search(r"steps_per_s\s+([0-9.]+)", log)
    if m:
        figures["train_steps_per_s"] = float(m.group(1))
    m = re.search(r"seconds\s+([0-9.]+)", log.split("training summary")[-1]) if "training summary" in log else None
    if m:
        figures["train_seconds"] = float(m.group(1))
    evals = sorted((run / "eval").glob("step_*.json")) if (run / "eval").is_dir() else []
    if evals:
        docs = [json.loads(e.read_text()) for e in evals]
        figures["success_at"] = ", ".join(f"{int(e.stem.split('_')[-1])}: {d['summary']['successes']}/"
                                          f"{d['summary']['episodes']}" for e, d in zip(evals, docs))
        s = docs[-1]["summary"]
        figures.update(success=f"{s['successes']}/{s['episodes']}",
                       eval_env_steps_per_s=round(float(s["env_steps_per_s"]), 1))
    return figures


def train_eval(out: Path, sizes: Sizes) -> StepResult:
    data, run = out / "data" / "lift.hdf5", out / "run"
    gen, train = train_eval_commands(sizes, data, run)
    if data.is_file():
        data.unlink()
    status, secs, log = _run("train_eval", [gen, train], out, sizes.limits["train_eval"])
    return StepResult("train_eval", status, secs, parse_train_eval(log, run), str(out / "train_eval.log"),
                      f"{' '.join(gen[1:])} && {' '.join(train[1:])}")


def machine() -> dict:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "python": platform.python_version(), "cores": os.cpu_count()}


def markdown(result: dict) -> str:
    """One table: a row per step (status, seconds, figures), then a row per grid figure."""
    m = result["machine"]
    lines = [f"GPU check ({'dry run on CPU' if result['dry'] else 'GPU'}): {m['gpu'] or 'no GPU'}, "
             f"{m['gpus']} GPU(s), torch {m['torch']}, {m['cores']} cores; {result['seconds']:.0f} s in all",
             "", "| step | measure | value | note |", "|---|---|---|---|"]
    for st in result["steps"]:
        f = st["figures"]
        if st["name"] == "grid":
            lines.append(f"| grid | {st['status']} | {st['seconds']:.0f} s | {len(f['rows'])} row(s) |")
            for r in f["rows"]:
                v = "-" if r.get("value") is None else f"{r['value']:.3g} {r.get('unit', '')}".strip()
                lines.append(f"| grid | {r['measure']} | {v} | {r.get('note', '')} |")
        else:
            figs = ", ".join(f"{k} {v}" for k, v in f.items())
            lines.append(f"| {st['name']} | {st['status']} | {st['seconds']:.0f} s | {figs} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder of the JSON, table and logs")
    p.add_argument("--dry", action="store_true", help="on the CPU at tiny sizes (proves the steps, not figures)")
    p.add_argument("--steps", nargs="+", choices=["cuda_tests", "grid", "train_eval"],
                   default=["cuda_tests", "grid", "train_eval"], help="run only these steps")
    args = p.parse_args(argv)
    import torch

    if not args.dry and not torch.cuda.is_available():
        print("error: --dry not given but no CUDA device is visible; expected a GPU machine (or --dry)",
              file=sys.stderr)
        return 2
    from visual_dr3.fileio import write_json_atomic, write_text_atomic

    sizes = DRY if args.dry else GPU
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = []
    for name in args.steps:
        print(f"[gpu_check] {name} (limit {sizes.limits[name]} s)", flush=True)
        st = {"cuda_tests": cuda_tests, "grid": grid, "train_eval": train_eval}[name](args.out, sizes)
        print(f"[gpu_check] {name}: {st.status} in {st.seconds:.0f} s", flush=True)
        steps.append(asdict(st))
    result = {"dry": args.dry, "machine": machine(), "seconds": time.perf_counter() - t0, "steps": steps,
              "command": " ".join(["python", "-m", "benchmarks.gpu_check", *(argv if argv is not None else sys.argv[1:])])}
    table = markdown(result)
    write_json_atomic(args.out / "gpu_check.json", result)
    write_text_atomic(args.out / "gpu_check.md", table)
    print(table)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if all(s["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
