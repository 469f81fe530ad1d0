"""Study report: read run folders, group them into conditions (seeds as replicates), write PNG plots and a
markdown page (``index.md``, with its results as ``summary.json`` beside it) with the setup, a per-condition table and the training curves.

    python -m visual_dr3.report runs/a runs/b ... --out reports/NAME [--title T] [--group-by dr3.coef]
        [--findings FINDINGS.md]

The numbers come from the runs; what they mean (did DR3 help, where not, what limits the runs) is the
author's, written in a markdown file passed as ``--findings`` and placed at the top of the page.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from visual_dr3.errors import UserError, cli_entry, command_name, say
from visual_dr3.fileio import ensure_writable_dir, write_text_atomic

__all__ = ["build_report", "main", "read_findings"]


def build_report(run_dirs: Sequence[str], out: str, title: str = "DR3 study", group_by: Optional[str] = None,
                 command: Optional[str] = None, verbose: bool = True, findings: "str | Path | None" = None) -> dict:
    """Read ``run_dirs``, write ``<out>/index.md``, ``<out>/summary.json`` and ``<out>/*.png``; the text of the markdown file
    ``findings`` goes under "Findings" at the top. Returns ``{"page", "plots", "conditions", "summaries",
    "runs"}``."""
    from visual_dr3.report.page import render
    from visual_dr3.report.plots import plot_all
    from visual_dr3.report.runs import group_runs, read_run, summarize_condition
    from visual_dr3.report.summary import summary_doc, write_summary

    if not run_dirs:
        raise UserError("no run folders given; expected one or more RUN_DIR")
    runs = []
    for d in run_dirs:
        r = read_run(d)
        runs.append(r)
        if verbose:
            steps = max((int(s[0][-1]) for s in r.series.values() if len(s[0])), default=0)
            say(f"read {r.path}: seed {r.seed}, {steps} steps, {len(r.evals)} evaluation(s)")
    findings_text = read_findings(str(findings)) if findings is not None else None
    conds = group_runs(runs, group_by)
    summaries = [summarize_condition(c) for c in conds]
    out_dir = ensure_writable_dir(out, "--out")
    plots = plot_all(conds, out_dir, title)
    if command is None:
        command = shlex.join(["python", "-m", "visual_dr3.report", *map(str, run_dirs), "--out", str(out),
                              "--title", title] + (["--group-by", group_by] if group_by else [])
                             + (["--findings", str(findings)] if findings is not None else []))
    page = write_text_atomic(out_dir / "index.md", render(title, runs, conds, summaries, plots, out_dir, command,
                                                          findings_text))
    write_summary(out_dir, summary_doc(title, conds))
    if verbose:
        say(f"report: {page} ({len(runs)} runs, {len(conds)} conditions, {len(plots)} plots)")
    return {"page": page, "plots": plots, "conditions": conds, "summaries": summaries, "runs": runs}


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog=command_name("python -m visual_dr3.report"),
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (config.yaml + metrics.csv)")
    p.add_argument("--out", required=True, help="report folder (index.md and PNGs are written there)")
    p.add_argument("--title", default="DR3 study", help="page title")
    p.add_argument("--group-by", dest="group_by", default=None,
                   help="config key (dotted, e.g. dr3.coef) that defines the conditions; default: every config "
                        "field that differs across the runs (seed and paths excluded)")
    p.add_argument("--findings", default=None, metavar="FILE",
                   help="markdown file with the findings (what the runs show, whether DR3 helped), placed under "
                        "'Findings' at the top of the page")
    a = p.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    build_report(a.run_dirs, a.out, title=a.title, group_by=a.group_by,
                 command=shlex.join(["python", "-m", "visual_dr3.report", *argv]),
                 findings=a.findings)


def read_findings(path: str) -> str:
    """The text of a ``--findings`` file; a one-line :class:`UserError` when it is missing or empty."""
    f = Path(path)
    if not f.is_file():
        raise UserError(f"--findings {path}: no such file; expected a markdown file")
    text = f.read_text(encoding="utf-8").strip()
    if not text:
        raise UserError(f"--findings {path}: the file is empty; expected the study's findings in markdown")
    return text
