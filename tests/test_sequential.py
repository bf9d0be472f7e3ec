"""Run until settled: the sequential design's per-look level against an independent simulation, seeds added as the
cells a study with more repeats declares, a sequential claim's look, and `inflang run --until-settled` end to end
(only the cells of unresolved claims get seeds; a plain rerun keeps them; kill -9 resumes)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from inflang.compiling.validate import load_study, point_key, with_repeats
from inflang.results.claims import evaluate, evaluate_rows, rows_for
from inflang.results.sequential import Design
from inflang.results.store import Store, claim_rows
from inflang.running.rounds import blocked_note, finished, next_targets, parse_duration
from inflang.spec.claims import Claim
from tests.test_claims import fake_study


def test_every_look_covers_at_once_with_the_per_look_level():
    """Normal unit values (mean 3, sd 2; another generator than the design's): t intervals at the design's
    per-look level, looked at after every seed from 3 to 12, all cover the mean in 95% of 20,000 paths."""
    design = Design(3, 12)
    look = design.look_level()
    assert 0.985 < look < 0.995  # stricter than 95%, far less strict than Bonferroni's 1 - 0.05 / 10
    rng = np.random.default_rng(2024)
    y = rng.normal(3.0, 2.0, (20_000, 12))
    missed = np.zeros(20_000, dtype=bool)
    for n in range(3, 13):
        half = sps.t.ppf(1 - (1 - look) / 2, n - 1) * y[:, :n].std(axis=1, ddof=1) / math.sqrt(n)
        missed |= np.abs(y[:, :n].mean(axis=1) - 3.0) > half
    assert abs(missed.mean() - 0.05) < 3 * math.sqrt(0.05 * 0.95 / 20_000) + 0.001
    assert Design(5, 5).look_level() == 0.95  # one look: the fixed interval
    assert design.overall_p(1 - look) == pytest.approx(0.05, abs=0.002)
    assert design.overall_p(0.001) < design.overall_p(0.01) < design.overall_p(0.2) <= 1.0


def test_added_seeds_are_the_cells_a_study_with_more_repeats_declares(write):
    three = load_study(write("a.yaml", STUDY))  # the study of the end-to-end tests below
    five = load_study(write("b.yaml", STUDY.replace("repeats: 3", "repeats: 5")))
    point = point_key({"training.weight_decay": 0.03})
    grown = with_repeats(three, {point: 5, point_key({"training.weight_decay": 0.01}): 2})
    want = [(c.cell_id, c.repeat, c.seed) for c in five.cells if point_key(c.params) == point]
    assert [(c.cell_id, c.repeat, c.seed) for c in grown.cells if point_key(c.params) == point] == want
    assert [c.cell_id for c in grown.cells if point_key(c.params) != point] == \
        [c.cell_id for c in three.cells if point_key(c.params) != point]  # fewer than declared: unchanged
    assert with_repeats(three, {}) is three


def test_a_sequential_look_reads_the_first_seeds_at_the_look_level(tmp_path: Path):
    """A contrast over 6 seeds, frozen at its look at 4: the interval is the t interval of the first 4 seeds'
    differences (recomputed here from the stored rows) at the design's per-look level."""
    d = "model.depth"
    store = fake_study(tmp_path / "s.duckdb", {(((d, 1),), "exact"): [0.5], (((d, 2),), "exact"): [0.6]},
                       seeds=6, noise=0.05)
    claim = Claim(name="c", metric="spearman", estimator="exact", contrast={"axis": d, "better": 2, "than": 1})
    design = Design(3, 10, settled=4)
    with store.reading() as con:
        rows = rows_for(con, "fake", "spearman")
    found = evaluate_rows([claim], [rows], [None], designs=[design])[0]
    means = {k: [float(np.nanmean(r.values)) for r in v["exact"] if r.repeat < 4] for k, v in rows.items()}
    diff = np.array(means[json.dumps({d: 2})]) - np.array(means[json.dumps({d: 1})])
    half = sps.t.ppf(1 - (1 - design.look_level()) / 2, 3) * diff.std(ddof=1) / 2
    assert found.seeds == 4 and found.max_seeds == 10 and found.seeds_added == 1
    assert found.level == pytest.approx(design.look_level())
    assert found.estimate == pytest.approx(diff.mean())
    assert (found.ci_low, found.ci_high) == pytest.approx((diff.mean() - half, diff.mean() + half))
    assert "sequential: stopped at its look at 4 of 3-10 seeds" in found.detail
    fixed = evaluate_rows([claim], [rows], [None])[0]  # without a design: all 6 seeds at 95%
    assert fixed.seeds == 6 and fixed.level == 0.95 and fixed.max_seeds is None
    store.close()


def test_next_round_raises_only_the_points_of_unresolved_claims():
    a, b, c = ({"x": v} for v in (0, 1, 2))
    cells = [(f"{x['x']}-{r}", x) for x in (a, b, c) for r in range(3)]
    claims = [Claim(name="open", metric="spearman", estimator="e", contrast={"axis": "x", "better": 1, "than": 0}),
              Claim(name="done", metric="spearman", estimator="e", at_least=0.5),
              Claim(name="full", metric="spearman", estimator="e", at_least=0.9, where={"x": 2})]
    have = {point_key(p): 3 for p in (a, b, c)}
    looks = {"open": ("unresolved", 3), "done": ("supported", 3), "full": ("unresolved", 6)}
    assert next_targets(claims, looks, 6, cells, have) == ({point_key(a): 4, point_key(b): 4}, [])
    assert next_targets(claims, {**looks, "open": ("frozen", 3)}, 6, cells, have) == ({}, [])  # stopped
    assert next_targets(claims, {**looks, "open": ("negligible", 3)}, 6, cells, have) == ({}, [])
    # a failed cell at the next seed (repeat 3) of a point it reads: no seeds for it, the others go on
    both = [*claims, Claim(name="other", metric="spearman", estimator="e", at_least=0.5, where={"x": 2})]
    assert next_targets(both, {**looks, "other": ("unresolved", 3)}, 6, cells, have, {point_key(b): 3}) == \
        ({point_key(c): 4}, ["open"])
    assert next_targets(claims, looks, 6, cells, have, {point_key(b): 5})[1] == []  # failed later: no matter
    assert finished({"a": ("unresolved", 20)}, 20) == "1 claim still unresolved at the last look (20 seeds)"
    assert finished({"a": ("negligible", 6)}, 20) == "no claim is unresolved"
    assert blocked_note(["open"]) == "; 1 unresolved claim got no seeds, a cell having failed (above) at the " \
        "next seed of a point it reads: 'open'"
    assert parse_duration("30m") == 1800 and parse_duration("1.5h") == 5400 and parse_duration("90") == 90
    with pytest.raises(ValueError):
        parse_duration("soon")


STUDY = """\
study: settle
dataset: {name: iris, test_size: 30}
model: {arch: logreg}
training: {optimizer: lbfgs, lr: 1.0, epochs: 50, weight_decay: 0.01}
estimators: [{name: exact}, {name: grad_dot}]
test_points: {count: 4}
ground_truth: {protocol: loo, solver: newton, removals: {select: random, k: 10}}
repeats: 3
sweep:
  training.weight_decay: [0.01, 0.03, 0.1]
claims:
  - {name: accurate, metric: spearman, estimator: grad_dot, at_least: 0.3}
  - name: decay matters
    metric: spearman
    estimator: grad_dot
    contrast: {axis: training.weight_decay, better: 0.03, than: 0.01}
"""


def _claims(db: Path) -> dict[str, dict]:
    return {r["claim"]: r for r in claim_rows(db, ["settle"])}


def test_run_until_settled_adds_seeds_where_claims_need_them(tmp_path: Path, write):
    from inflang.cli import app

    study = write("s.yaml", STUDY)
    db = tmp_path / "s.duckdb"
    cli = CliRunner()
    done = cli.invoke(app, ["run", str(study), "--db", str(db), "--until-settled", "--max-seeds", "5"])
    assert done.exit_code == 0, done.output
    assert "until settled: 2 rounds added 4 seed cells" in " ".join(done.output.split())
    rows = _claims(db)
    assert rows["accurate"]["verdict"] == "supported" and rows["accurate"]["seeds"] == 3  # stopped at its look
    assert rows["decay matters"]["seeds"] == 5 and rows["decay matters"]["sequential"]
    assert rows["decay matters"]["seeds_added"] == 2 and rows["decay matters"]["seconds_added"] > 0
    assert "sequential:" in rows["decay matters"]["detail"] and rows["decay matters"]["level"] > 0.97
    with Store(db).reading() as con:
        per_point = dict(con.execute("SELECT params, count(*) FROM cells WHERE study = 'settle' GROUP BY params")
                         .fetchall())
        tasks = con.execute("SELECT count(*), count(DISTINCT task_hash) FROM tasks").fetchone()
    assert sorted(json.loads(k)["training.weight_decay"] for k, n in per_point.items() if n == 5) == [0.01, 0.03]
    assert [n for k, n in per_point.items() if json.loads(k)["training.weight_decay"] == 0.1] == [3]
    assert tasks[0] == tasks[1]
    again = cli.invoke(app, ["run", str(study), "--db", str(db)])  # a plain run keeps the added seeds
    assert again.exit_code == 0, again.output
    assert "ran 0 tasks" in again.output and _claims(db) == rows
    other = cli.invoke(app, ["run", str(study), "--db", str(db), "--until-settled", "--max-seeds", "9"])
    assert other.exit_code == 2 and "fixed by their first --until-settled run" in other.output
    short = write("one.yaml", STUDY.replace("repeats: 3", "repeats: 1").replace("study: settle", "study: one"))
    refused = cli.invoke(app, ["run", str(short), "--db", str(db), "--until-settled"])
    assert refused.exit_code == 2 and "one.yaml:8" in refused.output and "at least 3 seeds" in refused.output
    assert "results go to" not in refused.output  # refused before the database is opened
    alone = cli.invoke(app, ["run", str(study), "--db", str(db), "--max-seeds", "5"])
    assert alone.exit_code == 2 and "goes with --until-settled" in alone.output


def test_a_killed_run_until_settled_resumes_to_the_same_verdicts(tmp_path: Path, write):
    """kill -9 once the first added seeds are recorded; the rerun finishes with the verdicts, intervals and
    tasks of an uninterrupted run, every task once."""
    study = write("s.yaml", STUDY)
    command = [sys.executable, "-m", "inflang.cli", "run", str(study), "--until-settled", "--max-seeds", "5"]
    whole = tmp_path / "whole.duckdb"
    subprocess.run([*command, "--db", str(whole)], check=True, capture_output=True, cwd=tmp_path)
    killed = tmp_path / "killed.duckdb"
    proc = subprocess.Popen([*command, "--db", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path, start_new_session=True)
    from inflang.results.store import study_added_repeats

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if study_added_repeats(killed, "settle"):
                break
        except Exception:  # the database is still being created
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([*command, "--db", str(killed)], capture_output=True, text=True, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    keep = ("claim", "verdict", "estimate", "ci_low", "ci_high", "seeds", "level", "seeds_added")
    assert [{k: r[k] for k in keep} for r in _claims(killed).values()] == \
        [{k: r[k] for k in keep} for r in _claims(whole).values()]
    for db in (whole, killed):
        with Store(db).reading() as con:
            total, distinct = con.execute("SELECT count(*), count(DISTINCT task_hash) FROM tasks").fetchone()
            cells = con.execute("SELECT count(*) FROM cells WHERE study = 'settle'").fetchone()[0]
        assert total == distinct and cells == 13


def test_claims_judged_sequentially_stay_so_in_a_plain_evaluation(tmp_path: Path):
    """Once recorded as sequential, `evaluate` (every run) reads the design from the database; a claim declared
    after seeds were added is judged under the study's design too; a look below the design's first is none."""
    from inflang.results.claims import definition

    d = "model.depth"
    store = fake_study(tmp_path / "s.duckdb", {(((d, 1),), "exact"): [0.5], (((d, 2),), "exact"): [0.6]}, seeds=5)
    claim = Claim(name="c", metric="spearman", estimator="exact", contrast={"axis": d, "better": 2, "than": 1})
    later = Claim(name="later", metric="spearman", estimator="exact", at_least=0.2)
    store.start_sequential("fake", [("c", definition(claim))], 3, 8)
    with store.reading() as con:
        found, fixed = evaluate(con, "fake", [claim, later])
    assert found.max_seeds == 8 and found.seeds == 5 and found.level == pytest.approx(Design(3, 8).look_level())
    assert fixed.max_seeds is None and fixed.level == 0.95  # no seeds were added: a fixed design is valid
    store.add_repeats("fake", {json.dumps({d: 1}): 5})
    with store.reading() as con:
        _, later_found = evaluate(con, "fake", [claim, later])
    assert later_found.max_seeds == 8 and later_found.level == pytest.approx(Design(3, 8).look_level())
    with store.reading() as con:
        rows = rows_for(con, "fake", "spearman")
    short = evaluate_rows([claim], [rows], [None], designs=[Design(6, 8)])[0]
    assert short.verdict == "not evaluable" and "looks at 6-8 seeds" in short.detail and short.ci_low is None
    store.close()


def test_the_overall_p_value_is_never_below_the_look_s_own():
    design = Design(3, 20)
    for p in (1e-9, 1e-7, 1e-4, 0.01, 0.3):
        assert p <= design.overall_p(p) <= 1.0
    assert design.overall_p(1e-9) == pytest.approx(18e-9)  # below the simulation's resolution: Bonferroni
    with pytest.raises(ValueError):
        Claim(name="c", metric="spearman", estimator="e", at_least=float("nan"))


def test_the_sequential_benchmark_settles_a_two_sd_effect_in_few_seeds():
    """A few studies of benchmarks/sequential.py (the full table: 2,000 per row, docs/language.md): an effect of 2
    between-seed sd settles, supported, within 3-12 seeds, with no false verdict on the contrast."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sequential.py"
    spec = importlib.util.spec_from_file_location("sequential_benchmark", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["sequential_benchmark"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    scenario = next(s for s in module.SCENARIOS if s.name == "effect 2 sd")
    _, results = module.run((module.SCENARIOS.index(scenario), 0, 30, 0))
    found = module.summary(results)
    assert found["contrast false"] == 0 and found["contrast settled"] == 1.0
    assert 3 <= found["contrast mean seeds"] <= 12


def test_the_settle_text_names_the_counts_past_the_last_look():
    """A sequential claim (last look at 20 seeds) names each count beyond it, "more than 1000" included, and asks
    for a fresh study only where resolving it or calling it negligible needs one."""
    from inflang.results.intervals import TMean
    from inflang.results.settle import settle

    claim = Claim(name="c", metric="spearman", estimator="e", contrast={"axis": "x", "better": 1, "than": 0},
                  smallest_effect=0.05)

    def unit(delta: float, sd: float, n: int) -> TMean:
        return TMean(delta, sd / math.sqrt(n), n - 1, n)

    level = Design(3, 20).look_level()
    near = settle(claim, unit(0.3, 0.2, 8), True, "unresolved", "", level, 8, 20)
    assert near.seeds_needed is not None and near.seeds_needed <= 20
    assert near.note.endswith("the seeds to resolve an effect of 0.05 lie past this claim's last look, 20 seeds, "
                              "which its sequential design fixed)")
    far = settle(claim, unit(0.049, 0.104, 10), True, "unresolved", "", level, 10, 20)
    assert far.seeds_needed is not None and far.seeds_needed > 20 and far.seeds_to_negligible is None
    assert "the seeds to resolve it, to call it negligible and to resolve an effect of 0.05 lie past" in far.note
    assert "needs a fresh study with a larger --max-seeds" in far.note
    fixed = settle(claim, unit(0.049, 0.104, 10), True, "unresolved", "", level, 10)
    assert "last look" not in fixed.note
