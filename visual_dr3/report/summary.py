"""``summary.json``: a report page's results in machine-readable form, written beside its ``index.md``.

Schema (what the README's results table and other tools read instead of the markdown tables)::

    {"title": str,
     "conditions": [{"name": str,
                     "config": {"task", "data_kind", "algorithm", "bc_filter", "backup", "n_step",
                                "dr3_coef", "dr3_features", "kl_coef", "max_steps", "image_size"},
                     "runs": [{"seed": int, "evals": [{"step": int, "successes": int, "episodes": int}]}]}]}

``bc_filter`` is null unless the run clones a filtered subset of its data. A config value a run did not record
is null. Pure: no torch, no plotting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

from visual_dr3.errors import UserError
from visual_dr3.report.runs import Condition, Run

#: summary config key -> the flattened ``config.yaml`` key it comes from
CONFIG_KEYS = {
    "task": "task",
    "data_kind": "data.kind",
    "algorithm": "algorithm",
    "bc_filter": "algo.bc_filter",
    "backup": "algo.backup",
    "n_step": "algo.n_step",
    "dr3_coef": "dr3.coef",
    "dr3_features": "dr3.features",
    "kl_coef": "kl.coef",
    "max_steps": "max_steps",
}
SUMMARY_NAME = "summary.json"


def data_kind(run: Run) -> Optional[str]:
    """The kind of the data the run trained on: read from the dataset's file name when the run names one
    (``lift_mixed_48px...``: ``mixed``; several sources: ``cog``), since ``data.kind`` then goes unused (it only
    picks the default file a run generates); else ``data.kind``."""
    paths = [str(v) for k, v in run.flat.items()
             if v and (k == "dataset" or (k.startswith("data.sources.") and k.endswith(".path")))]
    if len(paths) > 1:
        return "cog"
    for p in paths:
        for k in ("expert", "mixed", "cog", "stitch"):
            if f"_{k}" in Path(p).name:
                return k
    kind = run.flat.get("data.kind")
    return str(kind) if kind else None


def run_config(run: Run) -> dict[str, Any]:
    cfg = {name: run.flat.get(key) for name, key in CONFIG_KEYS.items()}
    cfg["data_kind"] = data_kind(run)
    cfg["image_size"] = run.image_size
    return cfg


def condition_doc(cond: Condition) -> dict[str, Any]:
    runs = []
    for r in cond.runs:
        evals = [{"step": int(e.step), "successes": int(e.successes), "episodes": int(e.episodes)}
                 for e in r.evals if e.episodes is not None and e.successes is not None]
        runs.append({"seed": int(r.seed) if r.seed is not None else None, "evals": evals})
    return {"name": cond.label, "config": run_config(cond.runs[0]) if cond.runs else {}, "runs": runs}


def summary_doc(title: str, conds: Sequence[Condition]) -> dict[str, Any]:
    return {"title": title, "conditions": [condition_doc(c) for c in conds]}


def write_summary(out_dir: "str | Path", doc: dict[str, Any]) -> Path:
    """Write ``<out_dir>/summary.json`` atomically."""
    from visual_dr3.fileio import write_text_atomic

    return write_text_atomic(Path(out_dir) / SUMMARY_NAME, json.dumps(doc, indent=1) + "\n")


def read_summary(path: "str | Path") -> dict[str, Any]:
    """A ``summary.json`` (or the folder holding one), checked against the schema; one-line UserError if not."""
    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY_NAME
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: cannot read a summary ({type(e).__name__}: {e}); expected the summary.json "
                        f"of a report page") from None
    problem = schema_problem(doc)
    if problem:
        raise UserError(f"{p}: {problem}")
    return doc


def schema_problem(doc: Any) -> Optional[str]:
    """What in ``doc`` breaks the schema (None when nothing does)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("title"), str):
        return "expected an object with a string 'title'"
    conds = doc.get("conditions")
    if not isinstance(conds, list):
        return "expected a list 'conditions'"
    for i, c in enumerate(conds):
        where = f"conditions[{i}]"
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            return f"{where}: expected an object with a string 'name'"
        if not isinstance(c.get("config"), dict) or set(CONFIG_KEYS) - set(c["config"]):
            return f"{where}.config: expected the keys {', '.join(CONFIG_KEYS)}"
        if not isinstance(c.get("runs"), list):
            return f"{where}: expected a list 'runs'"
        for j, r in enumerate(c["runs"]):
            if not isinstance(r, dict) or not isinstance(r.get("evals"), list) or "seed" not in r:
                return f"{where}.runs[{j}]: expected {{'seed': int, 'evals': [...]}}"
            for e in r["evals"]:
                if not isinstance(e, dict) or not all(isinstance(e.get(k), int) for k in
                                                      ("step", "successes", "episodes")):
                    return f"{where}.runs[{j}].evals: expected {{'step', 'successes', 'episodes'}} integers"
                if not 0 <= e["successes"] <= e["episodes"]:
                    return f"{where}.runs[{j}].evals: successes {e['successes']} not in [0, {e['episodes']}]"
    return None


def pooled_at(cond: dict[str, Any], step: Optional[int] = None) -> Optional[tuple[int, int, int, int]]:
    """``(step, successes, episodes, seeds)`` pooled over the condition's runs at ``step`` (default: the last
    step every run evaluated); None when no run has an evaluation there."""
    runs = [r for r in cond["runs"] if r["evals"]]
    if not runs:
        return None
    if step is None:
        common = set.intersection(*({e["step"] for e in r["evals"]} for r in runs))
        if not common:
            return None
        step = max(common)
    pts = [e for r in runs for e in r["evals"] if e["step"] == step]
    if not pts:
        return None
    return step, sum(e["successes"] for e in pts), sum(e["episodes"] for e in pts), len(pts)
