"""The reports of a DR3 study: one page per :class:`ReportSpec` over its run folders, and an index page.

:func:`build_reports` calls :func:`visual_dr3.report.build_report` on the run folders that hold
``config.yaml`` and ``metrics.csv`` (leaving out, with a line, those that do not yet), and with an index
folder writes :func:`write_index`: the experiment's title, the findings (``--findings``, a markdown file)
and per report a link to its page and its table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from experiments.plan import RunSpec
from experiments.runner import say


@dataclass(frozen=True)
class ReportSpec:
    """One report page over some of the runs: ``build_report(run dirs, out, title, group_by)``."""

    out: Path
    title: str
    runs: tuple[RunSpec, ...]
    group_by: Optional[str] = None
    name: str = ""  # section name on the index page when an experiment has several reports


def build_reports(reports: Sequence[ReportSpec], index: Optional[Path] = None, index_title: str = "",
                  dry_run: bool = False, findings: Optional[Path] = None) -> list[Path]:
    """Build each report from its run folders that hold ``config.yaml`` and ``metrics.csv``; with ``index``,
    also a page linking them with their tables. The markdown file ``findings`` goes on the index page, or on
    the report page when there is no index. Returns the pages written."""
    pages = []
    sections = []
    for rep in reports:
        dirs = [str(r.out_dir) for r in rep.runs]
        if dry_run:
            say(f"report {rep.out}: would build from {len(dirs)} run folders (group by {rep.group_by})")
            continue
        ready = [d for d in dirs if (Path(d) / "config.yaml").is_file() and (Path(d) / "metrics.csv").is_file()]
        for d in dirs:
            if d not in ready:
                say(f"report {rep.out}: leaving out {d} (no config.yaml or metrics.csv yet)")
        if not ready:
            say(f"report {rep.out}: no finished run folder; nothing to report")
            continue
        from visual_dr3.errors import UserError
        from visual_dr3.report import build_report

        try:
            res = build_report(ready, str(rep.out), title=rep.title, group_by=rep.group_by, verbose=False,
                               findings=findings if index is None else None)
        except UserError as e:
            say(f"report {rep.out}: error: {e}")
            continue
        say(f"report {res['page']}: {len(ready)} runs, {len(res['conditions'])} conditions, "
            f"{len(res['plots'])} plots")
        pages.append(Path(res["page"]))
        sections.append((rep, res))
    if index is not None and sections and not dry_run:
        from visual_dr3.report import read_findings

        text = read_findings(str(findings)) if findings is not None else None
        pages.append(write_index(index, index_title, sections, text))
    return pages


def write_index(out: Path, title: str, sections: Sequence[tuple[ReportSpec, dict]],
                findings: Optional[str] = None) -> Path:
    """``<out>/index.md`` (and ``summary.json``): the experiment's title, the findings, and per report a link to its page, its table
    and its differences in success."""
    from visual_dr3.fileio import write_text_atomic
    from visual_dr3.report.compare import table as differences_table
    from visual_dr3.report.page import table
    from visual_dr3.report.summary import summary_doc, write_summary

    lines = [f"# {title}", ""]
    if findings:
        lines += ["## Findings", "", findings.strip(), ""]
    for rep, res in sections:
        rel = os.path.relpath(Path(res["page"]).resolve(), Path(out).resolve())
        lines += [f"## {rep.name or rep.title}", "", f"[{rep.title}]({Path(rel).as_posix()})", ""]
        lines += table(res["summaries"]) + [""]
        diffs = differences_table(res["conditions"])
        if diffs:
            lines += ["Differences in success, b - a (pooled, 95% Newcombe interval, then per seed; the page above "
                      "says how they are called):", ""] + diffs + [""]
    page = write_text_atomic(Path(out) / "index.md", "\n".join(lines))
    # the index's summary.json: every section's conditions, each named after its section
    conds = [dict(c, name=f"{rep.name or rep.title}: {c['name']}") for rep, res in sections
             for c in summary_doc(rep.title, res["conditions"])["conditions"]]
    write_summary(out, {"title": title, "conditions": conds})
    return page
