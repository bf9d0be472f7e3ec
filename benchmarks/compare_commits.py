"""Two commits side by side, so that a regression shows as a ratio: the Iris MLP ensemble's retraining step
(121 models, 500 full-batch steps, float32 and float64, one thread, eager and compiled) and the 120-removal
study end to end (``benchmarks/end_to_end.py``'s study, ``inflang run`` from process start to exit, eager and
auto, each on a fresh database and an empty compile cache).

    python benchmarks/compare_commits.py OLD NEW [--repeats 3] [--json FILE]

Each commit is checked out into a temporary git worktree and run by this interpreter with that worktree first
on the path (so both use the same installed packages). The commits take turns within every repeat, and
each number is the best of ``--repeats``; the ratio is NEW / OLD (below 1: NEW is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import STUDY, study_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEP = """
import json, sys, time, torch
from runners.device import configure
configure("cpu")
torch.set_num_threads(1)
from inflang.spec import BundledDataset, MlpModel
from runners.data import load_raw, prepare
from runners.ensemble import UpdateRule, stack, train_ensemble, weighted_cross_entropy
from runners.models import build
out = {}
for name in ("float32", "float64"):
    dtype = getattr(torch, name)
    spec = BundledDataset(name="iris", test_size=0.2)
    data = prepare(spec, load_raw(spec), 0, dtype)
    module = build(MlpModel(arch="mlp", depth=2, width=16, activation="tanh"), data.input_shape, data.classes, 0, dtype)
    start = stack({k: v.detach() for k, v in module.named_parameters()}, 121)
    n = data.x_train.shape[0]
    weights = torch.ones(121, n, dtype=dtype)
    weights[torch.arange(1, 121), torch.arange(120) % n] = 0.0
    term = weighted_cross_entropy(data.y_train, weights)
    rule = UpdateRule(optimizer="sgd", lr=0.01, weight_decay=0.01, momentum=0.9)
    for engine in ("eager", "compiled"):
        train_ensemble(module, start, data.x_train, rule, 5, None, [0] * 121, term, engine=engine)
        began = time.perf_counter()
        train_ensemble(module, start, data.x_train, rule, 500, None, [0] * 121, term, engine=engine)
        out[f"step {name} {engine}"] = time.perf_counter() - began
print(json.dumps(out))
"""


def step_times(root: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", STEP], cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the step timing failed at {root}:\n{done.stderr}")
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def measure(root: Path, work: Path) -> dict[str, float]:
    found = step_times(root)
    for engine in ("eager", "auto"):
        cache = Path(tempfile.mkdtemp(dir=work, prefix="inductor-"))
        found[f"study {engine}"] = study_run(engine, work, cache, root, STUDY)["seconds"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inflang-compare-") as folder:
        work = Path(folder)
        trees = {}
        for label, rev in (("old", args.old), ("new", args.new)):
            trees[label] = work / label
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[label]), rev], cwd=ROOT, check=True,
                           capture_output=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
            for repeat in range(args.repeats):
                for label in ("old", "new"):
                    runs[label].append(measure(trees[label], work))
                    print(f"repeat {repeat + 1}, {label}: " + ", ".join(f"{k} {v:.2f} s"
                                                                      for k, v in runs[label][-1].items()), flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    best = {label: {k: min(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}
    print(f"\nbest of {args.repeats}, seconds: old {args.old}, new {args.new}; ratio new / old")
    for key in best["old"]:
        print(f"{key:24s} {best['old'][key]:8.2f} {best['new'][key]:8.2f} {best['new'][key] / best['old'][key]:7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"old": args.old, "new": args.new, "runs": runs, "best": best}, indent=1))


if __name__ == "__main__":
    main()
