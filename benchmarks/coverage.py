"""Coverage of inflang's 95% intervals by simulation with a known truth: every claim form and the pooled
(``sweep_results``) interval, for 1, 2, 3, 5 and 10 seeds, in every scenario below. It runs the same code as
``inflang run`` (``inflang.results.claims.evaluate_rows`` and ``inflang.results.pooling.pool``) on simulated
per-test-point rows; an interval counts where inflang gives one (a claim that is not evaluable gives none).

The simulated study: 4 sweep points x = 0..3, two estimators A and B, S seeds, T = 10 test points per cell, a
latent value
    z[x, e, s, t] = mu[x, e] + seed effect + test-point effect + item noise,
observed through g (the identity; tanh for a correlation near a bound; min(1, 1.02 tanh) for one that is
exactly 1 at most test points). mu[x, A] = m0 + d x, mu[x, B] = mu[x, A] - 2 d. The level that carries the
variance (sd 0.15; 0.45 on the latent scale of bounded metrics) has three equal parts: one shared by every point
and estimator, one per point, one per point and estimator (so trends, contrasts and comparisons feel it too).
Test points are the same ids at every sweep point (their shared parts make the cells of one seed share
test-point effects); each seed selects its own, unless the scenario fixes them (``select: indices``), where
the truth is about those test points. With one seed the interval is about that trained model, so its truth
includes the drawn seed effects. Truths of bounded metrics are E g(z) by Gauss-Hermite quadrature.

``between_test_points`` is simulated beside each study with the same scenario and a known share of 0.6 of the
latent variance at the test-point level (the rest item noise, with item-bootstrap replicates drawn as an ideal
bootstrap would); the truth is the share on the observed scale (0.6 where g is the identity).

    python benchmarks/coverage.py [--studies 2000] [--workers 2] [--only NAME [--only NAME ...]] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm as NORMAL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inflang.results.claims import ByPoint, evaluate_rows  # noqa: E402
from inflang.results.intervals import width_is_rounding  # noqa: E402
from inflang.results.pooling import SeedRows, pool  # noqa: E402
from inflang.spec.claims import Claim  # noqa: E402

SEEDS = (1, 2, 3, 5, 10)
POINTS, TESTS, REPLICATES, SD, LATENT_SD = 4, 10, 200, 0.15, 0.45
SHARE = 0.6
COLUMNS = ("sweep point", "at_least", "trend", "contrast", "compare", "between_test_points")
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(80)
WEIGHTS = WEIGHTS / WEIGHTS.sum()


@dataclass(frozen=True)
class Scenario:
    name: str
    where: str  # the level that carries the variance: item, test point or seed
    dist: str = "normal"  # of the effects at that level: normal, t3 (Student's t, 3 df) or lognormal (sd 1)
    metric: str = "score"  # score: unbounded; spearman: a correlation; flipped: 0/1
    link: str = "identity"  # identity, tanh, ones (min(1, 1.02 tanh): exactly 1 above tanh^-1(1 / 1.02))
    centre: float = 0.5  # g(m0): the metric's typical value
    other_tests: bool = False  # each sweep point selects its own test points (independent effects)
    fixed_tests: bool = False  # the same test points, with the same effects, in every seed
    items_too: bool = False  # item noise (sd 0.15) beside the variance at ``where``
    spread_items: bool = False  # item-noise variance differs between test points (lognormal, sd 1)
    flip: float | None = None  # a 0/1 metric with this probability at every test point
    missing: float = 0.0  # the share of (cell, test point) values that are NaN
    diverging: bool = False  # one seed in ten is 4 sd worse at every point (a training run that went astray)
    at_one: float = 0.85  # with link "ones": the share of values exactly 1


SCENARIOS = (
    Scenario("item", "item", metric="spearman"),
    Scenario("test point", "test point", metric="spearman"),
    Scenario("seed", "seed", metric="spearman"),
    Scenario("test point, other test points per sweep point", "test point", metric="spearman", other_tests=True),
    Scenario("test point and item, the same test points in every seed (select: indices)", "test point",
             fixed_tests=True, items_too=True),
    Scenario("item, t(3)", "item", dist="t3"),
    Scenario("item, lognormal", "item", dist="lognormal"),
    Scenario("test point, t(3)", "test point", dist="t3"),
    Scenario("test point, lognormal", "test point", dist="lognormal"),
    Scenario("seed, t(3)", "seed", dist="t3"),
    Scenario("seed, lognormal", "seed", dist="lognormal"),
    Scenario("item, item variance differing between test points", "item", spread_items=True),
    Scenario("spearman near 0.76, test point", "test point", metric="spearman", link="tanh", centre=0.76),
    Scenario("spearman near 0.76, seed", "seed", metric="spearman", link="tanh", centre=0.76),
    Scenario("spearman near 0.96, test point", "test point", metric="spearman", link="tanh", centre=0.96),
    Scenario("spearman near 0.96, seed", "seed", metric="spearman", link="tanh", centre=0.96),
    Scenario("spearman exactly 1 at 85% of test points", "test point", metric="spearman", link="ones"),
    Scenario("spearman exactly 1 at 50% of test points", "test point", metric="spearman", link="ones", at_one=0.5),
    Scenario("flipped, p = 0.01", "item", metric="flipped", flip=0.01),
    Scenario("flipped, p = 0.5", "item", metric="flipped", flip=0.5),
    Scenario("flipped, p = 0.99", "item", metric="flipped", flip=0.99),
    Scenario("test point, 30% NaN at shared test points", "test point", metric="spearman", missing=0.3),
    Scenario("seed, one seed in ten diverging", "seed", diverging=True),
)


def claims(metric: str) -> list[Claim]:
    return [Claim(name="at_least", metric=metric, estimator="A", at_least=0.5),
            Claim(name="trend", metric=metric, estimator="A", trend={"axis": "x", "direction": "up"}),
            Claim(name="contrast", metric=metric, estimator="A", contrast={"axis": "x", "better": 3, "than": 0}),
            Claim(name="compare", metric=metric, compare={"better": "A", "than": "B"})]


def link(scenario: Scenario, z: np.ndarray) -> np.ndarray:
    if scenario.link == "tanh":
        return np.tanh(z)
    if scenario.link == "ones":
        return np.minimum(1.0, 1.02 * np.tanh(z))
    return z


def expected(scenario: Scenario, mean: np.ndarray, sd: float) -> np.ndarray:
    """E g(mean + N(0, sd^2)), elementwise."""
    if scenario.link == "identity" or sd == 0:
        return link(scenario, mean)
    return (link(scenario, mean[..., None] + sd * NODES) * WEIGHTS).sum(-1)


def effects(rng: np.random.Generator, dist: str, shape: tuple[int, ...]) -> np.ndarray:
    """Standardised draws (mean 0, sd 1)."""
    if dist == "t3":
        return rng.standard_t(3, shape) / math.sqrt(3.0)
    if dist == "lognormal":
        return (rng.lognormal(0.0, 1.0, shape) - math.exp(0.5)) / math.sqrt((math.e - 1) * math.e)
    return rng.normal(0.0, 1.0, shape)


def three_parts(rng: np.random.Generator, dist: str, sd: float, shape: tuple[int, ...]) -> np.ndarray:
    """[P, 2, *shape] effects: a part shared by all points and estimators, one per point, one per both."""
    part = sd / math.sqrt(3)
    return part * (effects(rng, dist, (1, 1, *shape)) + effects(rng, dist, (POINTS, 1, *shape))
                   + effects(rng, dist, (POINTS, 2, *shape)))


def centre(scenario: Scenario) -> tuple[float, float]:
    """(m0, d) on the latent scale."""
    if scenario.link == "tanh":
        return math.atanh(scenario.centre), 0.1
    if scenario.link == "ones":  # a share ``at_one`` of latent values above the kink at atanh(1 / 1.02)
        return math.atanh(1 / 1.02) + float(NORMAL.ppf(scenario.at_one)) * LATENT_SD, 0.1
    return 0.5, 0.05


def ids_of(scenario: Scenario, x: int, s: int) -> list[int]:
    base = (0 if scenario.fixed_tests else s * POINTS * TESTS) + (x * TESTS if scenario.other_tests else 0)
    return list(range(base, base + TESTS))


def simulate(rng: np.random.Generator, scenario: Scenario, seeds: int) -> tuple[ByPoint, dict[str, float]]:
    """Rows of one simulated study and the truth of every column but the share."""
    m0, d = centre(scenario)
    mu = m0 + d * np.arange(POINTS)[:, None] - 2 * d * np.array([0.0, 1.0])[None, :]  # [P, 2]
    if scenario.flip is not None:
        values = (rng.random((POINTS, 2, seeds, TESTS)) < scenario.flip).astype(float)
        truth = np.full((POINTS, 2), scenario.flip)
        return _rows(scenario, values, None), _truths(truth)
    sd = LATENT_SD if scenario.link != "identity" else SD
    seed_sd, test_sd, item_sd = (sd if scenario.where == level_ or (level_ == "item" and scenario.items_too) else 0.0
                                 for level_ in ("seed", "test point", "item"))
    seed = three_parts(rng, scenario.dist, seed_sd, (seeds,))  # [P, 2, S]
    if scenario.diverging:
        seed = seed - 4 * sd * (rng.random((1, 1, seeds)) < 0.1)
    if scenario.other_tests:
        test = test_sd * effects(rng, scenario.dist, (POINTS, 2, seeds, TESTS))
    elif scenario.fixed_tests:
        test = np.broadcast_to(three_parts(rng, scenario.dist, test_sd, (1, TESTS)), (POINTS, 2, seeds, TESTS))
    else:
        test = three_parts(rng, scenario.dist, test_sd, (seeds, TESTS))
    scale = np.exp(rng.normal(0, 1.0, (POINTS, 2, seeds, TESTS)) - 0.5) if scenario.spread_items else 1.0
    item = item_sd * np.sqrt(scale) * effects(rng, scenario.dist, (POINTS, 2, seeds, TESTS))
    values = link(scenario, mu[:, :, None, None] + seed[..., None] + test + item)
    if scenario.missing:
        values[rng.random(values.shape) < scenario.missing] = np.nan
    # the truth: E g(z) over what the interval is not about
    if scenario.link == "identity":
        truth = mu + (seed[..., 0] if seeds == 1 else -4 * sd * 0.1 if scenario.diverging else 0.0)
        if scenario.fixed_tests and seeds >= 2:  # over seeds, about these test points (one seed: over them)
            truth = truth + test[:, :, 0].mean(-1)
    else:  # normal effects: given the seed (one seed), z is normal with the test point's and item's variance
        given = mu + seed[..., 0] if seeds == 1 else mu
        truth = expected(scenario, given, math.hypot(test_sd, item_sd) if seeds == 1 else sd)
    return _rows(scenario, values, None), _truths(truth)


def _truths(truth: np.ndarray) -> dict[str, float]:
    a = truth[:, 0]
    return {"at_least": float(a.mean()), "trend": float(np.polyfit(np.arange(POINTS), a, 1)[0]),
            "contrast": float(a[3] - a[0]), "compare": float((truth[:, 0] - truth[:, 1]).mean()),
            "sweep point": float(a[0])}


def _rows(scenario: Scenario, values: np.ndarray, replicates: np.ndarray | None) -> ByPoint:
    rows: ByPoint = {}
    seeds = values.shape[2]
    for x in range(POINTS):
        key = json.dumps({"x": x})
        rows[key] = {name: [SeedRows(s, ids_of(scenario, x, s), values[x, e, s],
                                     None if replicates is None else replicates[x, e, s]) for s in range(seeds)]
                     for e, name in enumerate(("A", "B"))}
    return rows


def share_truth(scenario: Scenario) -> float:
    """The real share on the observed scale: var_t E[g | test point] / var g, over the population (quadrature over
    the item noise, a large sample of test points)."""
    if scenario.link == "identity":
        return SHARE
    m0, _ = centre(scenario)
    test = np.random.default_rng(99).normal(0.0, LATENT_SD * math.sqrt(SHARE), 200_000)
    points = link(scenario, m0 + test[:, None] + LATENT_SD * math.sqrt(1 - SHARE) * NODES)
    mean = (points * WEIGHTS).sum(-1)
    noise = (points ** 2 * WEIGHTS).sum(-1) - mean ** 2
    return float(mean.var() / (mean.var() + noise.mean()))


def share_study(rng: np.random.Generator, scenario: Scenario, seeds: int, truth: float) -> str | None:
    """One simulated study of the share: the scenario's placement of test points, its distribution, link and
    missing values, with the latent variance split 0.6 / 0.4 between test points and items."""
    m0, _ = centre(scenario)
    sd = LATENT_SD if scenario.link != "identity" else SD
    test_sd, item_sd = sd * math.sqrt(SHARE), sd * math.sqrt(1 - SHARE)
    dist = scenario.dist if scenario.where == "test point" else "normal"
    if scenario.other_tests:
        test = test_sd * effects(rng, dist, (POINTS, 2, seeds, TESTS))
    elif scenario.fixed_tests:
        test = np.broadcast_to(three_parts(rng, dist, test_sd, (1, TESTS)), (POINTS, 2, seeds, TESTS))
    else:
        test = three_parts(rng, dist, test_sd, (seeds, TESTS))
    scale = np.exp(rng.normal(0, 1.0, (POINTS, 2, seeds, TESTS)) - 0.5) if scenario.spread_items else \
        np.ones((POINTS, 2, seeds, TESTS))
    item_dist = scenario.dist if scenario.where == "item" else "normal"
    latent = m0 + test
    values = link(scenario, latent + item_sd * np.sqrt(scale) * effects(rng, item_dist, latent.shape))
    draws = item_sd * np.sqrt(scale)[..., None] * effects(rng, item_dist, (*latent.shape, REPLICATES))
    replicates = link(scenario, latent[..., None] + draws)  # an ideal bootstrap: the item noise around the point
    if scenario.missing:
        values[rng.random(values.shape) < scenario.missing] = np.nan
    rows = _rows(scenario, values, replicates)
    claim = Claim(name="between_test_points", metric=scenario.metric, estimator="A",
                  between_test_points={"at_least": 0.5})
    (v,) = evaluate_rows([claim], [rows], [None])
    return _covers(v.ci_low, v.ci_high, truth)


def _covers(low: float | None, high: float | None, truth: float) -> str | None:
    """'in', 'below' (the interval lies below the truth) or 'above'; None without an interval."""
    if low is None or high is None:
        return None
    return "below" if high < truth else "above" if low > truth else "in"


def one_study(rng: np.random.Generator, scenario: Scenario, seeds: int) -> dict[str, str | None]:
    rows, truths = simulate(rng, scenario, seeds)
    verdicts = evaluate_rows(claims(scenario.metric), [rows] * 4, [None] * 4)
    out = {v.claim: _covers(v.ci_low, v.ci_high, truths[v.claim]) for v in verdicts}
    pooled = pool(("{}", "A", scenario.metric), rows[json.dumps({"x": 0})]["A"])
    given = pooled.ci_low is not None and not width_is_rounding(pooled.ci_low, pooled.ci_high)  # type: ignore[arg-type]
    # (no spread: sweep_results shows a point, which no claim reads a verdict off)
    out["sweep point"] = _covers(pooled.ci_low, pooled.ci_high, truths["sweep point"]) if given else None
    return out


def coverage(scenario: Scenario, seeds: int, studies: int, seed: int = 0) -> dict[str, float | None]:
    """Per column, the fraction of simulated studies whose interval covers the truth (None: never an interval),
    the share of studies that gave one (``<column> given``) and the share of the misses that lie below the
    truth (``<column> below``)."""
    rng = np.random.default_rng([seed, seeds, SCENARIOS.index(scenario)])
    hits: dict[str, list[str]] = {c: [] for c in COLUMNS}
    for _ in range(studies):
        for name, covered in one_study(rng, scenario, seeds).items():
            if covered is not None:
                hits[name].append(covered)
    if scenario.flip is None:  # the share of a 0/1 metric's spread is not simulated
        truth = share_truth(scenario)
        for _ in range(studies):
            covered = share_study(rng, scenario, seeds, truth)
            if covered is not None:
                hits["between_test_points"].append(covered)
    out: dict[str, float | None] = {c: (float(np.mean([x == "in" for x in h])) if h else None)
                                    for c, h in hits.items()}
    out.update({f"{c} given": len(h) / studies for c, h in hits.items()})
    out.update({f"{c} below": (h.count("below") / (len(h) - h.count("in")) if len(h) > h.count("in") else None)
                for c, h in hits.items()})
    return out


def _cell(found: dict[str, float | None], column: str) -> str:
    value = found[column]
    return "-" if value is None else f"{100 * value:.1f}"


def _job(job: tuple[str, int, int]) -> tuple[str, int, dict[str, float | None]]:
    name, seeds, studies = job
    scenario = next(s for s in SCENARIOS if s.name == name)
    return name, seeds, coverage(scenario, seeds, studies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=2000, help="simulated studies per scenario and seed count")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--only", action="append", help="a scenario's name, whole (names hold commas); repeatable")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    start = time.perf_counter()
    unknown = sorted(set(args.only or ()) - {s.name for s in SCENARIOS})
    if unknown:
        parser.error(f"no scenario named {', '.join(map(repr, unknown))}")
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    jobs = [(s.name, seeds, args.studies) for s in chosen for seeds in SEEDS]
    with ProcessPoolExecutor(args.workers) as executor:
        results = {(n, k): found for n, k, found in executor.map(_job, jobs)}
    print(f"coverage (%) of 95% intervals, {args.studies} simulated studies per cell (Monte-Carlo sd "
          f"{100 * math.sqrt(0.95 * 0.05 / args.studies):.1f} points); target 93-97%; per cell 1 / 2 / 3 / 5 / 10 "
          "seeds; '-': no interval given (not evaluable)")
    print("| scenario | " + " | ".join(COLUMNS) + " |")
    print("| --- | " + " | ".join("---" for _ in COLUMNS) + " |")
    table = []
    for s in chosen:
        cells = [" / ".join(_cell(results[(s.name, k)], c) for k in SEEDS) for c in COLUMNS]
        print(f"| {s.name} | " + " | ".join(cells) + " |", flush=True)
        table += [{"scenario": s.name, "seeds": k, **results[(s.name, k)]} for k in SEEDS]
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
