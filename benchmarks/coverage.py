"""Coverage of inflang's 95% intervals by simulation with a known truth: every claim form and the pooled
(``sweep_results``) interval, for 1, 2, 3, 5 and 10 seeds, with the variance placed at the item, the
test-point or the seed level. It runs the same code as ``inflang run`` (``inflang.claims.evaluate_rows`` and
``inflang.pooling.level``) on simulated per-test-point rows.

The simulated study: 4 sweep points x = 0..3, two estimators A and B, S seeds, T = 10 test points (the same
test points at every point, as with one split), a metric
    m[x, e, s, t] = mu[x, e] + seed effect + test-point effect + item noise,
mu[x, A] = 0.5 + 0.05 x, mu[x, B] = mu[x, A] - 0.1. The level that carries the variance (sd 0.15) has three equal
parts: one shared by every point and estimator, one per point, one per point and estimator (so trends,
contrasts and comparisons feel it too); the other levels carry none. Each test point's item-level bootstrap
replicates (B = 200) are drawn around its value with the item noise's variance, as an ideal bootstrap would.
With one seed the interval is about that trained model, so its truth includes the drawn seed effects.

A fourth placement has the variance at the test-point level with different test points at every sweep point
(as ``select: highest_loss`` picks them per model): with one seed those arms cannot pair (Welch).
The between-test-point share is simulated apart, with a known share of 0.6 (test-point sd 0.15 * sqrt(0.6),
item sd 0.15 * sqrt(0.4)) over all 4 x S cells of estimator A.

    python benchmarks/coverage.py [--studies 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inflang.claims import ByPoint, evaluate_rows  # noqa: E402
from inflang.pooling import SeedRows, level  # noqa: E402
from inflang.spec.claims import Claim  # noqa: E402

SEEDS = (1, 2, 3, 5, 10)
LEVELS = ("item", "test point", "seed", "test point, other test points per sweep point")
POINTS, TESTS, REPLICATES, SD = 4, 10, 200, 0.15
SHARE = 0.6
CLAIMS = [
    Claim(name="at_least", metric="spearman", estimator="A", at_least=0.5),
    Claim(name="trend", metric="spearman", estimator="A", trend={"axis": "x", "direction": "up"}),
    Claim(name="contrast", metric="spearman", estimator="A", contrast={"axis": "x", "better": 3, "than": 0}),
    Claim(name="compare", metric="spearman", compare={"better": "A", "than": "B"}),
]
SHARE_CLAIM = Claim(name="between_test_points", metric="spearman", estimator="A",
                    between_test_points={"at_least": 0.5})
COLUMNS = ("sweep point", "at_least", "trend", "contrast", "compare", "between_test_points")


def _three_parts(rng: np.random.Generator, sd: float, shape: tuple[int, ...]) -> np.ndarray:
    """[P, E, *shape] effects: a part shared by all points and estimators, one per point, one per both."""
    part = sd / math.sqrt(3)
    return (rng.normal(0, part, (1, 1, *shape)) + rng.normal(0, part, (POINTS, 1, *shape))
            + rng.normal(0, part, (POINTS, 2, *shape)))


def simulate(rng: np.random.Generator, seeds: int, where: str, share: bool = False
             ) -> tuple[ByPoint, np.ndarray]:
    """Rows of one simulated study, and the truth per (point, estimator) [P, 2] (the one seed's own when
    ``seeds`` is 1)."""
    mu = 0.5 + 0.05 * np.arange(POINTS)[:, None] - np.array([0.0, 0.1])[None, :]  # [P, 2]
    if share:
        test_sd, item_sd, seed_sd = SD * math.sqrt(SHARE), SD * math.sqrt(1 - SHARE), 0.0
        test = rng.normal(0, test_sd, (POINTS, 2, seeds, TESTS))
    elif where == LEVELS[3]:  # each point selects its own test points: their effects are independent
        seed_sd, item_sd = 0.0, 0.0
        test = rng.normal(0, SD, (POINTS, 2, seeds, TESTS))
    else:
        seed_sd = SD if where == "seed" else 0.0
        item_sd = SD if where == "item" else 0.0
        test = _three_parts(rng, SD if where == "test point" else 0.0, (seeds, TESTS))
    seed = _three_parts(rng, seed_sd, (seeds,))  # [P, 2, S]
    item = rng.normal(0, item_sd, (POINTS, 2, seeds, TESTS))
    values = mu[:, :, None, None] + seed[..., None] + test + item
    rows: ByPoint = {}
    for x in range(POINTS):
        key = json.dumps({"x": x})
        rows[key] = {}
        for e, name in enumerate(("A", "B")):
            ids = list(range(TESTS)) if where != LEVELS[3] else list(range(x * TESTS, (x + 1) * TESTS))
            rows[key][name] = [SeedRows(s, ids, values[x, e, s],
                                        values[x, e, s][:, None] + rng.normal(0, item_sd, (TESTS, REPLICATES))
                                        if share else None) for s in range(seeds)]
    truth = mu + (seed[..., 0] if seeds == 1 else 0.0)
    return rows, truth


def _covers(low: float | None, high: float | None, truth: float) -> bool | None:
    if low is None or high is None:
        return None
    return low <= truth <= high


def one_study(rng: np.random.Generator, seeds: int, where: str) -> dict[str, bool | None]:
    rows, truth = simulate(rng, seeds, where)
    a = truth[:, 0]
    truths = {"at_least": a.mean(), "trend": float(np.polyfit(np.arange(POINTS), a, 1)[0]),
              "contrast": a[3] - a[0], "compare": float((truth[:, 0] - truth[:, 1]).mean())}
    verdicts = evaluate_rows(CLAIMS, [rows] * len(CLAIMS), [None] * len(CLAIMS))
    out = {v.claim: _covers(v.ci_low, v.ci_high, truths[v.claim]) for v in verdicts}
    pooled = level(rows[json.dumps({"x": 0})]["A"], "pearson")
    interval = pooled.interval() if pooled is not None else None
    out["sweep point"] = _covers(interval.low if interval else None, interval.high if interval else None, a[0])
    return out


def share_study(rng: np.random.Generator, seeds: int) -> bool | None:
    rows, _ = simulate(rng, seeds, "", share=True)
    (v,) = evaluate_rows([SHARE_CLAIM], [rows], [None])
    return _covers(v.ci_low, v.ci_high, SHARE)


def coverage(seeds: int, where: str, studies: int, seed: int = 0) -> dict[str, float | None]:
    """Per column, the fraction of simulated studies whose interval covers the truth (None: no interval)."""
    rng = np.random.default_rng([seed, seeds, LEVELS.index(where)])
    hits: dict[str, list[bool]] = {c: [] for c in COLUMNS}
    for _ in range(studies):
        for name, covered in one_study(rng, seeds, where).items():
            if covered is not None:
                hits[name].append(covered)
    share_rng = np.random.default_rng([seed, seeds, 99])
    if where == LEVELS[0]:  # the share does not depend on where the other levels' variance lies
        for _ in range(studies):
            covered = share_study(share_rng, seeds)
            if covered is not None:
                hits["between_test_points"].append(covered)
    return {c: (float(np.mean(h)) if h else None) for c, h in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=1000, help="simulated studies per configuration")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    start = time.perf_counter()
    table = []
    print(f"coverage of 95% intervals, {args.studies} simulated studies per row (Monte-Carlo sd "
          f"{100 * math.sqrt(0.95 * 0.05 / args.studies):.1f} points); target 93-97%")
    print("| seeds | variance at | " + " | ".join(COLUMNS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    for seeds in SEEDS:
        for where in LEVELS:
            if seeds == 1 and where == "seed":
                print("| 1 | seed | n/a: with one seed and no variance below it, the seed's own mean (the truth of a "
                      "one-seed interval) is measured without error |")
                continue
            found = coverage(seeds, where, args.studies)
            table.append({"seeds": seeds, "variance": where, **found})
            cells = ["-" if found[c] is None else f"{100 * found[c]:.1f}%" for c in COLUMNS]  # type: ignore[operator]
            print(f"| {seeds} | {where} | " + " | ".join(cells) + " |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s; between_test_points: known share {SHARE}, simulated once per "
          "seed count)")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
