"""Reading run folders (``config.yaml``, ``metrics.csv``, ``eval/step_XXXXXXX.json``) and grouping them into
conditions with seeds as replicates. No torch, no matplotlib: numpy + PyYAML only."""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from visual_dr3.errors import UserError
from visual_dr3.evaluation.stats import wilson_interval

#: config keys that differ between runs of one condition without defining it (run bookkeeping, seeds)
NON_CONDITION_KEYS = frozenset({
    "seed", "output_dir", "resume", "wandb", "tensorboard", "progress", "log_every", "checkpoint_every",
    "eval_workers", "eval_envs_per_worker", "eval_policy_in", "eval_videos", "eval_every", "eval_episodes", "devices", "num_nodes",
    "accelerator",
    "data.device", "compile",
})

SUCCESS = "eval/success_rate"


@dataclass
class EvalPoint:
    """One evaluation of one run: the step, success rate, and (from the JSON) the episode counts."""
    step: int
    success_rate: float
    episodes: Optional[int] = None
    successes: Optional[int] = None


@dataclass
class Run:
    """One run folder: its flattened config, metric series ``{name: (steps, values)}`` and evaluations."""
    path: Path
    config: dict[str, Any]
    flat: dict[str, Any]
    series: dict[str, tuple[np.ndarray, np.ndarray]]
    evals: list[EvalPoint]
    image_size: Optional[int] = None

    @property
    def seed(self) -> Any:
        return self.flat.get("seed")

    def final(self, metric: str) -> float:
        """Last logged value of ``metric`` (NaN when never logged)."""
        if metric == SUCCESS and self.evals:
            return self.evals[-1].success_rate
        s = self.series.get(metric)
        return float(s[1][-1]) if s is not None and len(s[1]) else math.nan

    def curve(self, metric: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
        if metric == SUCCESS and self.evals:
            return (np.array([e.step for e in self.evals], dtype=np.int64),
                    np.array([e.success_rate for e in self.evals], dtype=np.float64))
        return self.series.get(metric)


@dataclass
class Condition:
    label: str
    runs: list[Run] = field(default_factory=list)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b": v}``; lists become tuples (hashable), lists of dicts are flattened by index."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
                for i, x in enumerate(v):
                    out.update(flatten(x, f"{key}.{i}") if isinstance(x, dict) else {f"{key}.{i}": x})
            elif isinstance(v, list):
                out[key] = tuple(v)
            else:
                out[key] = v
    return out


def fmt_value(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(fmt_value(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v)


def _float(s: str) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return math.nan


def read_metrics(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``metrics.csv`` -> ``{column: (steps, values)}``, blank cells skipped, sorted by step; a step logged
    twice keeps its last value."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e}); expected a CSV with a 'step' column") from None
    if not rows or "step" not in rows[0]:
        raise UserError(f"{path}: no 'step' column or no rows; expected the metrics.csv of a training run")
    per: dict[str, dict[int, float]] = {}
    for r in rows:
        step = _float(r.get("step", ""))
        if math.isnan(step):
            continue
        for k, v in r.items():
            if k in (None, "step", "epoch"):
                continue
            x = _float(v)
            if not math.isnan(x):
                per.setdefault(k, {})[int(step)] = x
    return {k: (np.array(sorted(d), dtype=np.int64), np.array([d[s] for s in sorted(d)], dtype=np.float64))
            for k, d in per.items()}


def read_evals(run_dir: Path) -> list[EvalPoint]:
    """The run's ``eval/step_XXXXXXX.json`` files, by step."""
    out = []
    for p in sorted((run_dir / "eval").glob("step_*.json")):
        m = re.fullmatch(r"step_(\d+)\.json", p.name)
        if not m:
            continue
        try:
            doc = json.loads(p.read_text())
            s = doc["summary"]
            episodes, successes = int(s["episodes"]), int(s["successes"])
            rate = float(s.get("success_rate", successes / episodes if episodes else math.nan))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{p}: not an evaluation JSON ({type(e).__name__}: {e}); expected "
                            f"{{'summary': {{'episodes', 'successes', 'success_rate'}}, ...}}") from None
        out.append(EvalPoint(step=int(doc.get("step", int(m.group(1)))), success_rate=rate,
                             episodes=episodes, successes=successes))
    return sorted(out, key=lambda e: e.step)


def read_run(path: "str | Path") -> Run:
    """One run folder; a folder without ``config.yaml`` and ``metrics.csv`` is a one-line UserError."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; expected a run folder (with config.yaml and metrics.csv)")
    missing = [n for n in ("config.yaml", "metrics.csv") if not (path / n).is_file()]
    if missing:
        raise UserError(f"{path}: not a run folder ({' and '.join(missing)} missing); expected the --output-dir "
                        f"of a train.py run")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path / 'config.yaml'}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.yaml'}: expected a mapping of config fields")
    series = read_metrics(path / "metrics.csv")
    evals = read_evals(path)
    if not evals and SUCCESS in series:  # evaluations logged to the CSV only: rates without episode counts
        st, v = series[SUCCESS]
        evals = [EvalPoint(step=int(a), success_rate=float(b)) for a, b in zip(st, v)]
    image_size = None
    hp = path / "hparams.yaml"
    if hp.is_file():
        try:
            h = yaml.safe_load(hp.read_text())
            image_size = int(h["image_size"]) if isinstance(h, dict) and "image_size" in h else None
        except (OSError, yaml.YAMLError, ValueError, TypeError):
            image_size = None
    if image_size is None and config.get("image_size") is not None:
        image_size = int(config["image_size"])
    return Run(path=path, config=config, flat=flatten(config), series=series, evals=evals, image_size=image_size)


@functools.lru_cache(maxsize=1)
def default_flat_config() -> dict[str, Any]:
    """Today's ``TrainConfig`` defaults, flattened (read-only): what a run whose config predates an option ran with
    (options are added off, so an older run behaves as the default)."""
    from visual_dr3.learner.config import TrainConfig, to_dict
    return flatten(to_dict(TrainConfig()))


def config_value(run: Run, key: str) -> Any:
    """``key`` of ``run``'s flattened config; a key its config lacks reads as today's default (``<unset>`` when
    there is none)."""
    return run.flat[key] if key in run.flat else default_flat_config().get(key, "<unset>")


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys (flattened) whose values differ across ``runs``, minus run bookkeeping (seed, paths,
    evaluation schedule: :data:`NON_CONDITION_KEYS`). A key that some configs lack (written by an older version)
    reads as today's default there; a key with no default counts only if the runs that have it disagree."""
    keys = sorted(set().union(*(r.flat.keys() for r in runs)))
    out = []
    for k in keys:
        if k in NON_CONDITION_KEYS:
            continue
        vals = {fmt_value(config_value(r, k)) for r in runs if k in r.flat or k in default_flat_config()}
        if len(vals) > 1:
            out.append(k)
    return out


def group_runs(runs: Sequence[Run], group_by: Optional[str] = None) -> list[Condition]:
    """Conditions in first-seen order. Label: ``key=value`` of ``group_by``, else of every differing key
    (``", "``-joined); ``"all runs"`` when nothing differs."""
    if group_by is not None:
        if not any(group_by in r.flat for r in runs):
            known = ", ".join(sorted(runs[0].flat)[:12]) if runs else ""
            raise UserError(f"--group-by {group_by}: no run's config has this key (have: {known}, ...)")
        keys = [group_by]
    else:
        keys = differing_keys(runs)
    conds: dict[str, Condition] = {}
    for r in runs:
        label = ", ".join(f"{k}={fmt_value(config_value(r, k))}" for k in keys) or "all runs"
        conds.setdefault(label, Condition(label)).runs.append(r)
    return list(conds.values())


# -- aggregation ------------------------------------------------------------------------------------------

def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and population std (ddof=0) over the non-NaN values, and how many there were."""
    v = np.array([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std()), int(v.size)


def band(cond: Condition, metric: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``(steps, mean, min, max)`` across the condition's seeds at every step any seed logged (each step
    aggregates the seeds that logged it); None when no seed logged ``metric``."""
    curves = [c for c in (r.curve(metric) for r in cond.runs) if c is not None and len(c[0])]
    if not curves:
        return None
    steps = np.unique(np.concatenate([c[0] for c in curves]))
    mean, lo, hi = (np.full(len(steps), np.nan) for _ in range(3))
    for i, s in enumerate(steps):
        vals = [float(c[1][j]) for c in curves for j in np.nonzero(c[0] == s)[0]]
        mean[i], lo[i], hi[i] = np.mean(vals), np.min(vals), np.max(vals)
    return steps, mean, lo, hi


@dataclass
class Summary:
    """A condition's table row."""
    label: str
    seeds: list
    final_success: tuple[float, float, int]  # mean, std, n seeds
    best_success: tuple[float, float, int]
    #: each seed's success averaged over its evaluations (the DR3 paper's stability measure), mean/std over seeds
    mean_success: tuple[float, float, int]
    pooled: Optional[tuple[int, int, float, float]]  # successes, episodes, low, high (final evaluations)
    finals: dict[str, tuple[float, float, int]]
    growths: dict[str, tuple[float, float, int]]  # GROWTH_METRICS: each seed's last / first logged value


TABLE_METRICS = ("dr3_dot", "srank", "q_mean", "q_minus_mc")
#: metrics whose growth over a run (last / first logged value) the table gives: encoder and penultimate dots
GROWTH_METRICS = ("dr3_dot", "pen_dr3_dot")


def summarize_condition(cond: Condition) -> Summary:
    finals = {m: mean_std([r.final(m) for r in cond.runs]) for m in TABLE_METRICS}
    final_sr = mean_std([r.evals[-1].success_rate if r.evals else math.nan for r in cond.runs])
    best_sr = mean_std([max(e.success_rate for e in r.evals) if r.evals else math.nan for r in cond.runs])
    avg_sr = mean_std([float(np.mean([e.success_rate for e in r.evals])) if r.evals else math.nan
                       for r in cond.runs])
    last = [r.evals[-1] for r in cond.runs if r.evals]
    pooled = None
    if last and all(e.episodes is not None for e in last):
        succ, n = sum(e.successes for e in last), sum(e.episodes for e in last)
        pooled = (succ, n, *wilson_interval(succ, n))
    return Summary(label=cond.label, seeds=[r.seed for r in cond.runs], final_success=final_sr,
                   best_success=best_sr, mean_success=avg_sr, pooled=pooled, finals=finals,
                   growths={m: mean_std([growth(r, m) for r in cond.runs]) for m in GROWTH_METRICS})


def growth(run: Run, metric: str) -> float:
    """Last logged value of ``metric`` over its first (NaN when not logged or the first is 0)."""
    s = run.series.get(metric)
    if s is None or not len(s[1]) or s[1][0] == 0:
        return math.nan
    return float(s[1][-1] / s[1][0])
