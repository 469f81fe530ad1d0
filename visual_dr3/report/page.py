"""The markdown page: setup, the per-condition table, the plots (embedded by relative path)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

from visual_dr3.report import compare
from visual_dr3.report.runs import GROWTH_METRICS, Condition, Run, Summary, fmt_value
from visual_dr3.report.plots import PLOT_METRICS

DASH = "-"


def fmt_ms(ms: tuple[float, float, int], spec: str = ".4g") -> str:
    """``mean ± std`` (std over seeds, ddof=0); ``-`` when no seed has the value."""
    mean, std, n = ms
    if n == 0 or math.isnan(mean):
        return DASH
    return f"{mean:{spec}} ± {std:{spec}}"


def fmt_pooled(p) -> str:
    if p is None:
        return DASH
    succ, n, lo, hi = p
    return f"{succ}/{n} [{lo:.3f}, {hi:.3f}]"


def table(summaries: Sequence[Summary]) -> list[str]:
    head = ["condition", "seeds", "final success", "pooled final 95% Wilson", "best success",
            "success averaged over training",
            "final dr3_dot", *(f"{m} final/first" for m in GROWTH_METRICS), "final srank", "final q_mean",
            "final Q(data) - MC return"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        seeds = ",".join(fmt_value(x) for x in s.seeds)
        row = [s.label, f"{len(s.seeds)} ({seeds})", fmt_ms(s.final_success, ".3f"), fmt_pooled(s.pooled),
               fmt_ms(s.best_success, ".3f"), fmt_ms(s.mean_success, ".3f"), fmt_ms(s.finals["dr3_dot"]),
               *(fmt_ms(s.growths[m], ".3g") for m in GROWTH_METRICS), fmt_ms(s.finals["srank"]),
               fmt_ms(s.finals["q_mean"]), fmt_ms(s.finals["q_minus_mc"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return lines


def _values(runs: Sequence[Run], key: str) -> str:
    vals = []
    for r in runs:
        v = fmt_value(r.flat.get(key)) if key in r.flat else DASH
        if v not in vals:
            vals.append(v)
    return ", ".join(f"`{v}`" for v in vals) if vals else DASH


def setup(runs: Sequence[Run], command: str) -> list[str]:
    datasets = []
    for r in runs:
        for k, v in r.flat.items():
            if (k == "dataset" or (k.startswith("data.sources.") and k.endswith(".path"))) and v:
                if fmt_value(v) not in datasets:
                    datasets.append(fmt_value(v))
    sizes = []
    for r in runs:
        s = str(r.image_size) if r.image_size is not None else DASH
        if s not in sizes:
            sizes.append(s)
    return [
        "## Setup", "",
        f"- task(s): {_values(runs, 'task')}",
        f"- dataset(s): {', '.join(f'`{d}`' for d in datasets) if datasets else DASH}",
        f"- image size: {', '.join(sizes)}",
        f"- encoder: {_values(runs, 'model.encoder')}",
        f"- steps (max_steps): {_values(runs, 'max_steps')}",
        f"- batch size (per device): {_values(runs, 'batch_size')}",
        "- runs: " + ", ".join(f"`{r.path}` (seed {fmt_value(r.seed)})" for r in runs),
        "", "Regenerate this report:", "", "```bash", command, "```", "",
    ]


def render(title: str, runs: Sequence[Run], conds: Sequence[Condition], summaries: Sequence[Summary],
           plots: Mapping[str, Path], out_dir: Path, command: str, findings: Optional[str] = None) -> str:
    lines = [f"# {title}", "",
             f"{len(runs)} run(s) in {len(conds)} condition(s); seeds (config `seed`) are replicates.", ""]
    if findings:
        lines += ["## Findings", "", findings.strip(), ""]
    lines += setup(runs, command)
    lines += ["## Results per condition", "",
              "Success rates: mean ± std across seeds of each seed's final (last) and best evaluation; the "
              "pooled interval is the 95% Wilson interval over all final-evaluation episodes of the "
              "condition's seeds (successes/episodes). dr3_dot, srank, q_mean: last logged value, mean ± std "
              "(ddof=0) across seeds; dr3_dot final/first: each seed's last logged encoder phi(s)·phi(s') over "
              "its first, mean ± std (the growth DR3 is meant to stop); pen_dr3_dot final/first: the same for the Q "
              "heads' penultimate-layer features (logged whichever features DR3 acts on). `-`: not logged (e.g. no "
              "evaluation in a SARSA probe run).", ""]
    lines += table(summaries)
    diffs = compare.table(conds)
    if diffs:
        lines += ["", "## Differences in success", "",
                  "Each pair of conditions, b - a, at each evaluation step, over the seeds both evaluated there: the "
                  "difference of the pooled success rates with its 95% interval (Newcombe's hybrid score interval, "
                  "which treats episodes as independent and so is too narrow when seeds differ), then each seed's "
                  "own difference in successes. A difference is called higher or lower only when the interval "
                  "excludes 0 and every seed moved that way; otherwise it is within noise (\"seeds disagree\": the "
                  "interval excludes 0, but some seed tied or moved the other way).", ""]
        lines += diffs
    lines += ["", "## Training curves", "",
              "Line: mean across a condition's seeds at each logged step; shaded band: min-max across seeds.", ""]
    if not plots:
        lines += ["(no plottable metric logged)", ""]
    for metric, p in plots.items():
        rel = Path(p).relative_to(out_dir).as_posix()
        lines += [f"### {PLOT_METRICS[metric][1]}", "", f"![{metric}]({rel})", ""]
    missing = [m for m in PLOT_METRICS if m not in plots]
    if missing:
        lines += ["Not logged by any run (no plot): " + ", ".join(f"`{m}`" for m in missing), ""]
    return "\n".join(lines)
