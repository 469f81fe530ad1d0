"""The study report (``python -m visual_dr3.report``) on small fake run folders with chosen numbers."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visual_dr3.errors import UserError
from visual_dr3.report import build_report
from visual_dr3.report.runs import differing_keys, group_runs, read_run, summarize_condition

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Z = 1.959963984540054


def _config(seed, coef=0.01, backup="td", out="x"):
    return {"task": "lift", "dataset": "data/lift_mixed.hdf5", "output_dir": out, "seed": seed,
            "max_steps": 20, "batch_size": 8, "eval_every": 10,
            "model": {"encoder": "drq", "feature_dim": 32, "hidden_dims": [32, 32]},
            "algo": {"backup": backup, "discount": 0.99}, "dr3": {"coef": coef, "features": "encoder"}}


def make_run(root: Path, name: str, seed: int, coef: float, backup: str, train_rows, eval_rows=(),
             evals=(), image_size=32, pen_dots=None, q_minus_mc=None) -> Path:
    """A fake run folder. ``train_rows``: (step, dr3_dot, srank, q_mean, critic_loss); ``eval_rows``:
    (step, success_rate) logged to metrics.csv as Lightning's CSV logger does (own row, other cells blank);
    ``evals``: (step, successes, episodes) written as eval/step_XXXXXXX.json; ``pen_dots``: pen_dr3_dot per
    train row (None: the column is not logged); ``q_minus_mc``: likewise, Q on data minus the Monte-Carlo return."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(_config(seed, coef, backup, str(d)), sort_keys=False))
    (d / "hparams.yaml").write_text(yaml.safe_dump({"image_size": image_size}))
    cols = ["actor_loss", "critic_loss", "dr3_dot", "eval/success_rate", "q_mean", "srank", "step"]
    cols += ["pen_dr3_dot"] if pen_dots is not None else []
    cols += ["q_minus_mc"] if q_minus_mc is not None else []
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for i, (step, dot, srank, q, loss) in enumerate(train_rows):
            w.writerow({"actor_loss": -1.0, "critic_loss": loss, "dr3_dot": dot, "q_mean": q, "srank": srank,
                        "step": step, **({"pen_dr3_dot": pen_dots[i]} if pen_dots is not None else {}),
                        **({"q_minus_mc": q_minus_mc[i]} if q_minus_mc is not None else {})})
        for step, sr in eval_rows:
            w.writerow({"eval/success_rate": sr, "step": step})
    for step, succ, n in evals:
        (d / "eval").mkdir(exist_ok=True)
        records = [{"episode": i, "success": i < succ, "return": float(i < succ), "length": 10} for i in range(n)]
        summary = {"episodes": n, "successes": succ, "success_rate": succ / n}
        (d / "eval" / f"step_{step:07d}.json").write_text(json.dumps({"step": step, "summary": summary,
                                                                      "records": records}))
    return d


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "runs"
    a0 = make_run(root, "td_c01_s0", 0, 0.01, "td",
                  [(10, 2.0, 14, 0.5, 3.0), (20, 4.0, 10, 1.0, 2.0)],
                  eval_rows=[(10, 0.2), (20, 0.6)], evals=[(10, 2, 10), (20, 6, 10)], pen_dots=[1.0, 3.0],
                  q_minus_mc=[-0.5, 0.25])
    a1 = make_run(root, "td_c01_s1", 1, 0.01, "td",
                  [(10, 3.0, 16, 1.0, 5.0), (20, 6.0, 12, 2.0, 4.0)],
                  eval_rows=[(10, 0.5), (20, 0.3)], evals=[(10, 5, 10), (20, 3, 10)], pen_dots=[2.0, 2.0],
                  q_minus_mc=[-0.2, -0.05])
    b0 = make_run(root, "td_c0_s0", 0, 0.0, "td",
                  [(10, 8.0, 9, 3.0, 1.0), (20, 20.0, 5, 9.0, 1.5)],
                  eval_rows=[(10, 0.1), (20, 0.25)])  # evaluation in metrics.csv only: no episode counts
    s0 = make_run(root, "sarsa_s0", 0, 0.01, "sarsa",
                  [(10, 2.5, 12, 0.7, 2.0), (20, 2.5, 12, 0.8, 1.0)])  # SARSA probe: no evaluation
    return [a0, a1, b0, s0]


def wilson_by_hand(s, n):
    p = s / n
    denom = 1 + Z * Z / n
    centre = (p + Z * Z / (2 * n)) / denom
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / denom
    return centre - half, centre + half


def test_grouping_by_differing_keys_and_forced_key(study):
    runs = [read_run(d) for d in study]
    assert differing_keys(runs) == ["algo.backup", "dr3.coef"]  # seed and output_dir are not conditions
    del runs[1].flat["dr3.features"]  # a key an older config lacks reads as today's default (encoder): no condition
    assert differing_keys(runs) == ["algo.backup", "dr3.coef"]
    runs[1].flat["made.up"] = 1  # nor does a key with no default that only one config has
    assert differing_keys(runs) == ["algo.backup", "dr3.coef"]
    # an option newer than some runs, on (non-default) in the others: a condition, the older runs at its default
    for r in runs[:2]:
        r.flat["algo.awr_normalize"] = True
    assert differing_keys(runs) == ["algo.awr_normalize", "algo.backup", "dr3.coef"]
    labels = [c.label for c in group_runs(runs)]
    assert labels[0].startswith("algo.awr_normalize=True") and labels[-1].startswith("algo.awr_normalize=False")
    for r in runs[:2]:
        del r.flat["algo.awr_normalize"]
    conds = group_runs(runs)
    assert [c.label for c in conds] == ["algo.backup=td, dr3.coef=0.01", "algo.backup=td, dr3.coef=0.0",
                                        "algo.backup=sarsa, dr3.coef=0.01"]
    assert [[r.seed for r in c.runs] for c in conds] == [[0, 1], [0], [0]]
    forced = group_runs(runs, "dr3.coef")
    assert [c.label for c in forced] == ["dr3.coef=0.01", "dr3.coef=0.0"]
    assert [[r.path.name for r in c.runs] for c in forced] == [["td_c01_s0", "td_c01_s1", "sarsa_s0"],
                                                               ["td_c0_s0"]]
    assert [c.label for c in group_runs(runs[:2])] == ["all runs"]
    with pytest.raises(UserError, match="--group-by dr3.nope"):
        group_runs(runs, "dr3.nope")


def test_aggregated_numbers(study):
    conds = group_runs([read_run(d) for d in study])
    a, b, sarsa = (summarize_condition(c) for c in conds)
    assert a.seeds == [0, 1]
    # final dr3_dot 4 and 6 -> 5 ± 1 (population std); srank 10, 12; q_mean 1, 2
    assert a.finals["dr3_dot"] == (pytest.approx(5.0), pytest.approx(1.0), 2)
    assert a.finals["srank"] == (pytest.approx(11.0), pytest.approx(1.0), 2)
    assert a.finals["q_mean"] == (pytest.approx(1.5), pytest.approx(0.5), 2)
    # Q on data minus the Monte-Carlo return, final 0.25 and -0.05 -> 0.1 ± 0.15; never logged by b's run
    assert a.finals["q_minus_mc"] == (pytest.approx(0.1), pytest.approx(0.15), 2)
    assert b.finals["q_minus_mc"][2] == 0 and math.isnan(b.finals["q_minus_mc"][0])
    # dr3_dot last/first: 4/2 and 6/3 -> 2 ± 0
    assert a.growths["dr3_dot"] == (pytest.approx(2.0), pytest.approx(0.0), 2)
    # pen_dr3_dot last/first: 3/1 and 2/2 -> 2 ± 1; not logged by the other conditions' runs
    assert a.growths["pen_dr3_dot"] == (pytest.approx(2.0), pytest.approx(1.0), 2)
    assert b.growths["pen_dr3_dot"][2] == 0 and math.isnan(b.growths["pen_dr3_dot"][0])
    # final evaluations 6/10 and 3/10; best 6/10 and 5/10 (from the JSONs)
    assert a.final_success == (pytest.approx(0.45), pytest.approx(0.15), 2)
    assert a.best_success == (pytest.approx(0.55), pytest.approx(0.05), 2)
    # averaged over each seed's evaluations: (0.2 + 0.6) / 2 and (0.5 + 0.3) / 2 -> 0.4 ± 0
    assert a.mean_success == (pytest.approx(0.4), pytest.approx(0.0), 2)
    succ, n, lo, hi = a.pooled
    assert (succ, n) == (9, 20)
    lo_h, hi_h = wilson_by_hand(9, 20)
    assert lo == pytest.approx(lo_h, abs=1e-12) and hi == pytest.approx(hi_h, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.2582, 0.6579)
    # success from metrics.csv only: rates, but no episode counts for an interval
    assert b.final_success[:1] == (pytest.approx(0.25),) and b.best_success[0] == pytest.approx(0.25)
    assert b.mean_success[:1] == (pytest.approx(0.175),)
    assert b.pooled is None
    assert sarsa.pooled is None and sarsa.final_success[2] == 0 and math.isnan(sarsa.final_success[0])


def test_report_files_and_page(study, tmp_path):
    out = tmp_path / "reports" / "study"
    res = build_report([str(d) for d in study], str(out), title="Fake study", verbose=False)
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {"dr3_dot.png", "pen_dr3_dot.png", "srank.png", "q_mean.png", "q_minus_mc.png", "critic_loss.png",
                    "success_rate.png"}
    import matplotlib.image as mpimg

    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    md = (out / "index.md").read_text()
    assert res["page"] == out / "index.md"
    lo, hi = wilson_by_hand(9, 20)
    assert (f"| algo.backup=td, dr3.coef=0.01 | 2 (0,1) | 0.450 ± 0.150 | 9/20 [{lo:.3f}, {hi:.3f}] "
            f"| 0.550 ± 0.050 | 0.400 ± 0.000 | 5 ± 1 | 2 ± 0 | 2 ± 1 | 11 ± 1 | 1.5 ± 0.5 |") in md
    assert ("| algo.backup=td, dr3.coef=0.0 | 1 (0) | 0.250 ± 0.000 | - | 0.250 ± 0.000 | 0.175 ± 0.000 | 20 ± 0 "
            "| 2.5 ± 0 | - | 5 ± 0 | 9 ± 0 |") in md
    assert ("| algo.backup=sarsa, dr3.coef=0.01 | 1 (0) | - | - | - | - | 2.5 ± 0 | 1 ± 0 | - | 12 ± 0 "
            "| 0.8 ± 0 |") in md
    assert "Not logged by any run (no plot): `dr3_cos`, `phi_norm`" in md
    assert "## Findings" not in md  # only when --findings is given
    for name in pngs:
        assert f"]({name})" in md  # embedded by relative path
    assert "# Fake study" in md
    assert "- task(s): `lift`" in md and "`data/lift_mixed.hdf5`" in md and "- image size: 32" in md
    assert "- encoder: `drq`" in md and "- batch size (per device): `8`" in md and "(max_steps): `20`" in md
    assert "python -m visual_dr3.report" in md and "min-max" in md


def test_summary_json_beside_the_page(study, tmp_path):
    from visual_dr3.report.summary import pooled_at, read_summary, schema_problem

    out = tmp_path / "reports" / "study"
    build_report([str(d) for d in study], str(out), title="Fake study", verbose=False)
    doc = json.loads((out / "summary.json").read_text())
    assert doc["title"] == "Fake study"
    assert [c["name"] for c in doc["conditions"]] == ["algo.backup=td, dr3.coef=0.01", "algo.backup=td, dr3.coef=0.0",
                                                      "algo.backup=sarsa, dr3.coef=0.01"]
    a, b, sarsa = doc["conditions"]
    assert a["config"] == {"task": "lift", "data_kind": "mixed", "algorithm": None, "bc_filter": None,
                           "backup": "td", "n_step": None, "dr3_coef": 0.01, "dr3_features": "encoder",
                           "kl_coef": None, "max_steps": 20, "image_size": 32}
    assert a["runs"] == [{"seed": 0, "evals": [{"step": 10, "successes": 2, "episodes": 10},
                                               {"step": 20, "successes": 6, "episodes": 10}]},
                         {"seed": 1, "evals": [{"step": 10, "successes": 5, "episodes": 10},
                                               {"step": 20, "successes": 3, "episodes": 10}]}]
    # rates from metrics.csv only carry no episode counts: no evaluation in the summary
    assert b["runs"] == [{"seed": 0, "evals": []}] and sarsa["runs"] == [{"seed": 0, "evals": []}]
    assert pooled_at(a) == (20, 9, 20, 2) and pooled_at(a, 10) == (10, 7, 20, 2)
    assert pooled_at(b) is None and pooled_at(a, 30) is None
    assert read_summary(out) == doc and schema_problem(doc) is None
    bad = dict(doc, conditions=[dict(a, runs=[{"seed": 0, "evals": [{"step": 1, "successes": 11, "episodes": 10}]}])])
    assert "successes 11 not in [0, 10]" in schema_problem(bad)
    (out / "summary.json").write_text("{")
    with pytest.raises(UserError, match="summary.json: cannot read a summary"):
        read_summary(out)


def test_cli_subprocess_and_bad_input(study, tmp_path):
    out = tmp_path / "rep"
    cmd = [sys.executable, "-m", "visual_dr3.report", *map(str, study[:2]), "--out", str(out), "--title", "T"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.strip().splitlines()
    assert [ln.startswith("read ") for ln in lines] == [True, True, False]
    assert lines[-1] == f"report: {out / 'index.md'} (2 runs, 1 conditions, 7 plots)"
    md = (out / "index.md").read_text()
    assert "| all runs | 2 (0,1) |" in md
    assert f"--out {out} --title T" in md  # the command line that regenerates it

    findings = tmp_path / "findings.md"
    findings.write_text("DR3 kept the dot product flat.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    p = subprocess.run(cmd + ["--findings", str(findings)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    md = (out / "index.md").read_text()
    head, _, rest = md.partition("## Findings\n\nDR3 kept the dot product flat.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert head.startswith("# T\n") and "## Setup" in rest and "## Setup" not in head
    for bad_findings, why in ((tmp_path / "none.md", "no such file"), (tmp_path / "empty.md", "the file is empty")):
        if bad_findings.name == "empty.md":
            bad_findings.write_text("  \n")
        b = subprocess.run(cmd + ["--findings", str(bad_findings)], capture_output=True, text=True, timeout=120)
        assert b.returncode == 2 and b.stderr.strip().splitlines()[-1] == (
            f"error: --findings {bad_findings}: {why}; expected " +
            ("a markdown file" if why == "no such file" else "the study's findings in markdown"))

    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    bad = subprocess.run([sys.executable, "-m", "visual_dr3.report", str(study[0]), str(not_a_run),
                          "--out", str(tmp_path / "rep2")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    err = bad.stderr.strip().splitlines()
    assert err[-1].startswith(f"error: {not_a_run}: not a run folder") and "Traceback" not in bad.stderr
    assert not (tmp_path / "rep2" / "index.md").exists()


def test_bad_input_in_process(tmp_path, study):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(UserError, match="metrics.csv missing"):
        read_run(tmp_path / "half")
    with pytest.raises(UserError, match="not a folder"):
        read_run(tmp_path / "nope")
    (study[0] / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="no 'step' column"):
        read_run(study[0])


def test_differences_pair_seeds_per_step_and_call_only_consistent_differences(tmp_path):
    from visual_dr3.evaluation.stats import newcombe_interval
    from visual_dr3.report.compare import HIGHER, LOWER, NOISE, SEEDS_DISAGREE, differences, pairs, verdict

    root = tmp_path / "runs"
    rows = [(10, 1.0, 5, 0.1, 1.0), (30, 1.0, 5, 0.1, 1.0)]
    a = [make_run(root, f"a_s{s}", s, 0.0, "td", rows, evals=ev) for s, ev in
         [(0, [(10, 2, 10), (20, 0, 10), (30, 0, 10)]), (1, [(10, 3, 10), (20, 1, 10), (30, 0, 10)]),
          (2, [(10, 1, 10), (20, 0, 10), (30, 0, 10)])]]
    # seed 2 of b never ran: the comparison pairs seeds 0 and 1 only
    b = [make_run(root, f"b_s{s}", s, 0.01, "td", rows, evals=ev) for s, ev in
         [(0, [(10, 5, 10), (20, 8, 10), (30, 9, 10)]), (1, [(10, 6, 10), (20, 0, 10), (30, 8, 10)])]]
    ca, cb = group_runs([read_run(d) for d in a + b])
    ds = differences(ca, cb)
    assert [d.step for d in ds] == [10, 20, 30] and all(d.seeds == [0, 1] for d in ds)
    # step 10: 11/20 vs 5/20, both seeds +3, but the interval [-0.0018, 0.536] holds 0
    assert (ds[0].successes, ds[0].episodes, ds[0].per_seed) == ((5, 11), (20, 20), [3, 3])
    assert (ds[0].diff, ds[0].low, ds[0].high) == pytest.approx(newcombe_interval(11, 20, 5, 20), abs=1e-12)
    assert round(ds[0].low, 4) == -0.0018 and ds[0].verdict == NOISE
    # step 20: 8/20 vs 1/20, interval [0.090, 0.567] above 0, but seed 1 went down (+8/-1)
    assert ds[1].per_seed == [8, -1] and round(ds[1].low, 4) == 0.0902 and ds[1].verdict == SEEDS_DISAGREE
    # step 30: 17/20 vs 0/20, every seed up
    assert ds[2].per_seed == [9, 8] and ds[2].low > 0 and ds[2].verdict == HIGHER
    back = differences(cb, ca)  # the other way round: the same interval, negated
    assert back[2].verdict == LOWER and back[2].per_seed == [-9, -8]
    assert (back[0].diff, back[0].low, back[0].high) == pytest.approx((-ds[0].diff, -ds[0].high, -ds[0].low))
    assert verdict(-0.1, 0.2, [5, 5]) == NOISE and verdict(0.01, 0.2, [1, 0]) == SEEDS_DISAGREE
    assert verdict(-0.3, -0.01, [-1, -2, -3]) == LOWER
    assert [(x.label, y.label) for x, y in pairs([ca, cb])] == [(ca.label, cb.label)]
    md = (build_report([str(d) for d in a + b], str(tmp_path / "rep"), verbose=False)["page"]).read_text()
    assert "## Differences in success" in md and "- C1: dr3.coef=0.0" in md and "- C2: dr3.coef=0.01" in md
    assert "| b - a | step 10 | step 20 | step 30 |" in md
    assert ("| C2 - C1 | +0.300 [-0.002, +0.536] (+3/+3) within noise | +0.350 [+0.090, +0.567] (+8/-1) within "
            "noise (seeds disagree) | +0.850 [+0.") in md and "(+9/+8) **higher** |" in md


def test_no_differences_section_without_two_evaluated_conditions(study, tmp_path):
    md = build_report([str(d) for d in study], str(tmp_path / "rep"), verbose=False)["page"].read_text()
    assert "## Differences in success" not in md  # one condition has episode counts; the others none


def test_results_table_from_summaries_and_readme_markers(study, tmp_path):
    from visual_dr3.report import results

    build_report([str(d) for d in study], str(tmp_path / "reports" / "fake"), title="Fake", verbose=False)
    reg = tmp_path / "results.yaml"
    reg.write_text(yaml.safe_dump({"rows": [{"page": "fake", "condition": "algo.backup=td, dr3.coef=0.01",
                                             "method": "CQL+DR3", "data": "mixed", "wall_time": "9 s",
                                             "device": "CPU"}]}))
    table = results.render(reg, tmp_path / "reports")
    lo, hi = wilson_by_hand(9, 20)
    assert table.splitlines()[2] == (f"| lift | mixed | CQL+DR3 | **45%** [{lo:.0%}, {hi:.0%}] (9/20, 2 seeds) | 20 "
                                     f"| 9 s | CPU | [fake](reports/fake/index.md) |")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{results.BEGIN}\nold\n{results.END}\n\ntail\n")
    argv = ["--registry", str(reg), "--reports", str(tmp_path / "reports")]
    with pytest.raises(SystemExit) as e:
        results.main(argv + ["--check", str(readme)])
    assert e.value.code == 1
    results.main(argv + ["--write", str(readme)])
    assert readme.read_text() == f"# x\n\n{results.BEGIN}\n{table}\n{results.END}\n\ntail\n"
    results.main(argv + ["--check", str(readme)])  # fresh: exit 0
    reg.write_text(yaml.safe_dump({"rows": [{"page": "fake", "condition": "nope", "method": "m", "data": "d",
                                             "wall_time": "w", "device": "c"}]}))
    with pytest.raises(UserError, match="no condition named 'nope'"):
        results.render(reg, tmp_path / "reports")


def test_readme_results_table_matches_the_reports():
    """The README's results table is the one the committed summaries generate (it cannot drift)."""
    from visual_dr3.report import results

    root = Path(__file__).resolve().parents[1]
    table = results.render(root / "reports" / "results.yaml", root / "reports")
    text = (root / "README.md").read_text(encoding="utf-8")
    assert results.splice(text, table, "README.md") == text


def test_every_report_page_has_a_valid_summary():
    from visual_dr3.report.summary import read_summary

    root = Path(__file__).resolve().parents[1] / "reports"
    pages = sorted(root.rglob("index.md"))
    assert len(pages) > 10
    for page in pages:
        if page.parent == root:
            continue  # reports/index.md is the index of pages
        read_summary(page.parent)  # raises a UserError naming the file when missing or off-schema


def test_summary_data_kind_is_the_dataset_the_run_used_not_the_unused_default():
    from types import SimpleNamespace

    from visual_dr3.report.summary import data_kind

    # --dataset given: data.kind (default "expert") only names the file a run would generate, so the file decides
    assert data_kind(SimpleNamespace(flat={"data.kind": "expert", "dataset": "data/lift_stitch_48px_100ep.hdf5"})) \
        == "stitch"
    assert data_kind(SimpleNamespace(flat={"data.kind": "expert", "dataset": "data/lift_mixed_48px_50ep.hdf5"})) \
        == "mixed"
    assert data_kind(SimpleNamespace(flat={"data.kind": "mixed", "dataset": None})) == "mixed"
    assert data_kind(SimpleNamespace(flat={"data.sources.0.path": "a_expert.hdf5",
                                           "data.sources.1.path": "b_expert.hdf5"})) == "cog"
    assert data_kind(SimpleNamespace(flat={"dataset": "my_file.hdf5"})) is None
