"""Plan hashing: what a change recomputes and what it reuses."""

from __future__ import annotations

from inflang.compiling.plan import compile_study
from inflang.compiling.validate import load_study

BASE = """\
study: p
dataset: {name: iris}
model: {arch: mlp, depth: 1, width: 4}
training: {epochs: 10}
estimators:
  - {name: exact, damping: 0.01, label: a}
  - {name: exact, damping: 0.1, label: b}
ground_truth: {protocol: loo, steps: 5, removals: {select: random, k: 5}}
"""


def plan_of(write, text, name="s.yaml"):
    return compile_study(load_study(write(name, text)))


def hashes(plan, kind):
    return {t.hash for t in plan.tasks.values() if t.kind == kind}


def test_estimators_share_one_trained_model(write):
    plan = plan_of(write, BASE)
    assert len(hashes(plan, "train")) == 1 and len(hashes(plan, "curvature")) == 1
    assert len(hashes(plan, "estimate")) == 2 and len(hashes(plan, "metrics")) == 2
    assert len(hashes(plan, "ground_truth")) == 1


def test_changing_damping_recomputes_only_that_estimator(write):
    before = plan_of(write, BASE)
    after = plan_of(write, BASE.replace("damping: 0.1", "damping: 0.2"), "t.yaml")
    changed = set(after.tasks) - set(before.tasks)
    assert {after.tasks[h].kind for h in changed} == {"estimate", "metrics"}
    assert len(changed) == 2
    assert after.cells[0].estimates["a"] == before.cells[0].estimates["a"]


def test_labels_and_descriptions_do_not_change_hashes(write):
    before = plan_of(write, BASE)
    after = plan_of(write, BASE.replace("label: a", "label: z") + "description: words\n", "t.yaml")
    assert set(after.tasks) == set(before.tasks)


def test_training_change_recomputes_everything_downstream(write):
    before = plan_of(write, BASE)
    after = plan_of(write, BASE.replace("epochs: 10", "epochs: 11"), "t.yaml")
    assert not set(after.tasks) & set(before.tasks)


def test_top_k_ground_truth_depends_on_the_ranking_estimator(write):
    text = BASE.replace("{select: random, k: 5}", "{select: top_k, k: 5, by: b}")
    before = plan_of(write, text)
    gt = before.cells[0].ground_truth
    assert before.cells[0].estimates["b"] in before.tasks[gt].deps
    after = plan_of(write, text.replace("damping: 0.1", "damping: 0.3"), "t.yaml")
    assert after.cells[0].ground_truth != gt
    after_a = plan_of(write, text.replace("damping: 0.01", "damping: 0.03"), "u.yaml")
    assert after_a.cells[0].ground_truth == gt


def test_swept_cells_share_tasks_they_have_in_common(write):
    plan = plan_of(write, BASE + "sweep:\n  estimators.1.damping: [0.1, 0.5]\n")
    assert len(plan.cells) == 2
    assert len(hashes(plan, "train")) == 1 and len(hashes(plan, "ground_truth")) == 1
    assert len(hashes(plan, "estimate")) == 3  # a (shared), b at 0.1, b at 0.5


def test_cost_counts_retrained_models(write):
    plan = plan_of(write, BASE)
    (gt,) = [t for t in plan.tasks.values() if t.kind == "ground_truth"]
    assert gt.models == 6 + 4 and gt.cost_steps == 50  # 5 removals, the control and 4 resolution probes


def test_trak_models_are_extra_train_tasks_shared_within_the_cell(write):
    text = BASE.replace("  - {name: exact, damping: 0.01, label: a}\n  - {name: exact, damping: 0.1, label: b}\n",
                        "  - {name: trak, models: 3, label: a}\n  - {name: trak, models: 2, label: b}\n")
    plan = plan_of(write, text)
    trains = hashes(plan, "train")
    assert len(trains) == 3  # the cell's model and two replicas; the second trak reuses replica 1
    cell = plan.cells[0]
    assert len(cell.replicas) == 2 and cell.train not in cell.replicas
    a, b = plan.tasks[cell.estimates["a"]], plan.tasks[cell.estimates["b"]]
    assert set(a.deps) == {cell.train, *cell.replicas} and set(b.deps) == {cell.train, cell.replicas[0]}
    replica = plan.tasks[cell.replicas[0]]
    assert replica.inputs["replica"] == 1 and replica.inputs["dataset"] == plan.tasks[cell.train].inputs["dataset"]
    assert ("replica", None, cell.replicas[1]) in cell.all()
