"""False verdicts and seeds used when claims are judged sequentially (``inflang run --until-settled``), by
simulation with a known truth: a look after every added seed from 3 to 20, each claim stopping at its first
supported, contradicted or negligible verdict. It runs the code ``inflang run`` runs
(``inflang.results.claims.evaluate_rows`` with each claim's ``inflang.results.sequential.Design``) on simulated
per-test-point rows.

The simulated study: sweep points x = 0, 1, estimators A and B, up to 20 seeds, 10 test points per cell,
    y[x, e, s, t] = mu[x, e] + seed effect (sd sqrt(0.4), one per cell) + test-point effect (sd 1),
so that a seed's difference between two cells has sd 1 (2 x 0.4 + 2 x 1 / 10): effects are in units of that
between-seed sd. Claims: ``contrast`` (A at x = 1 minus x = 0, truth ``effect``), ``compare`` (A minus B at
x = 0, truth ``effect``) and ``at_least`` (A at x = 0 against its own true mean: every verdict on it is false).
A false verdict: supported or contradicted where the truth is on the other side or at the line, negligible
where |truth| >= smallest_effect.

    python benchmarks/sequential.py [--studies 2000] [--workers 2] [--json FILE] [--only "0/1;null"]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inflang.results.claims import ByPoint, evaluate_rows  # noqa: E402
from inflang.results.pooling import SeedRows  # noqa: E402
from inflang.results.sequential import Design  # noqa: E402
from inflang.spec.claims import Claim  # noqa: E402

FIRST, LAST, TESTS = 3, 20, 10
SEED_SD, TEST_SD = math.sqrt(0.4), 1.0
SETTLED = ("supported", "contradicted", "negligible")


@dataclass(frozen=True)
class Scenario:
    name: str
    effect: float = 0.0  # true contrast and compare, in between-seed sd
    dist: str = "normal"  # seed effects: normal or t3 (Student's t, 3 df, scaled to the same sd)
    link: str = "identity"  # identity, or tanh around a correlation of 0.9 (effects on the latent scale x 0.1)
    smallest: float | None = None  # smallest_effect of the contrast and compare
    adjust: str = "none"
    flip: float | None = None  # a 0/1 metric, 1 with this probability at every test point (no seed effects)


SCENARIOS = (
    Scenario("null, normal seed effects"),
    Scenario("null, t(3) seed effects", dist="t3"),
    Scenario("null, a correlation near 0.9 (tanh)", link="tanh"),
    Scenario("null, the three claims Holm-adjusted", adjust="holm"),
    Scenario("null, a 0/1 metric at p = 0.5 (Clopper-Pearson on at_least)", flip=0.5),
    Scenario("null, a 0/1 metric at p = 0.9", flip=0.9),
    Scenario("truth at smallest_effect 0.5 (negligible is false)", effect=0.5, smallest=0.5),
    Scenario("effect 0, smallest_effect 1", smallest=1.0),
    Scenario("effect 1 sd", effect=1.0),
    Scenario("effect 2 sd", effect=2.0),
    Scenario("effect 3 sd", effect=3.0),
)


def claims(scenario: Scenario, truth_a0: float) -> list[Claim]:
    metric = "spearman" if scenario.link == "tanh" else "flipped" if scenario.flip is not None else "score"
    small = {} if scenario.smallest is None else {"smallest_effect": scenario.smallest * _scale(scenario)}
    return [Claim(name="contrast", metric=metric, estimator="A", contrast={"axis": "x", "better": 1, "than": 0},
                  **small),
            Claim(name="compare", metric=metric, compare={"better": "A", "than": "B"}, where={"x": 0}, **small),
            Claim(name="at_least", metric=metric, estimator="A", where={"x": 0}, at_least=truth_a0)]


def _scale(scenario: Scenario) -> float:
    return 0.1 if scenario.link == "tanh" else 1.0


def _seed_effects(rng: np.random.Generator, dist: str, shape: tuple[int, ...]) -> np.ndarray:
    if dist == "t3":
        return SEED_SD * rng.standard_t(3, shape) / math.sqrt(3.0)
    return SEED_SD * rng.normal(0.0, 1.0, shape)


def simulate(rng: np.random.Generator, scenario: Scenario) -> tuple[ByPoint, dict[str, float]]:
    """20 seeds of rows, and the truth of each claim's statistic."""
    if scenario.flip is not None:
        values = (rng.random((2, 2, LAST, TESTS)) < scenario.flip).astype(float)
        return _rows(values), {"contrast": 0.0, "compare": 0.0, "at_least": scenario.flip}
    scale = _scale(scenario)
    m0 = math.atanh(0.9) if scenario.link == "tanh" else 0.0
    mu = m0 + scale * scenario.effect * np.array([[0.0, -1.0], [1.0, 0.0]])  # [x, e]: A - B and x1 - x0 = effect
    z = mu[:, :, None, None] + scale * (_seed_effects(rng, scenario.dist, (2, 2, LAST, 1))
                                        + TEST_SD * rng.normal(0.0, 1.0, (2, 2, LAST, TESTS)))
    values = np.tanh(z) if scenario.link == "tanh" else z
    if scenario.link == "tanh":  # E tanh over the seed and test-point effects (normal), by quadrature
        nodes, weights = np.polynomial.hermite_e.hermegauss(80)
        sd = scale * math.hypot(SEED_SD, TEST_SD)
        truth = (np.tanh(mu[..., None] + sd * nodes) * (weights / weights.sum())).sum(-1)
    else:
        truth = mu
    return _rows(values), {"contrast": float(truth[1, 0] - truth[0, 0]), "compare": float(truth[0, 0] - truth[0, 1]),
                  "at_least": float(truth[0, 0])}


def _rows(values: np.ndarray) -> ByPoint:
    """[x, estimator, seed, test point] values as each seed's per-test-point rows."""
    return {json.dumps({"x": x}): {name: [SeedRows(s, list(range(TESTS)), values[x, e, s], None)
                                          for s in range(LAST)] for e, name in enumerate("AB")} for x in range(2)}


def false(verdict: str, claim: Claim, truth: float) -> bool:
    if verdict == "negligible":
        return abs(truth) >= (claim.smallest_effect or 0.0)
    line = claim.threshold
    if verdict == "supported":
        return truth <= line if claim.at_least is not None or claim.at_most is None else truth >= line
    if verdict == "contradicted":
        return truth >= line if claim.at_least is not None or claim.at_most is None else truth <= line
    return False


def one_study(rng: np.random.Generator, scenario: Scenario) -> list[tuple[str, int, bool]]:
    """Per claim: its final verdict, the seeds of its last look, whether the verdict is false."""
    rows, truth = simulate(rng, scenario)
    family = claims(scenario, truth["at_least"])
    stops: dict[str, tuple[str, int]] = {}
    for n in range(FIRST, LAST + 1):
        designs = [Design(FIRST, LAST, settled=stops[c.name][1] if c.name in stops else n) for c in family]
        if scenario.adjust == "none":  # frozen claims cannot change: judge only the open ones
            open_ = [i for i, c in enumerate(family) if c.name not in stops]
            found = evaluate_rows([family[i] for i in open_], [rows] * len(open_), [None] * len(open_),
                                  designs=[designs[i] for i in open_])
            for i, v in zip(open_, found, strict=True):
                if v.verdict in SETTLED:
                    stops[family[i].name] = (v.verdict, n)
        else:
            found = evaluate_rows(family, [rows] * len(family), [None] * len(family), adjust=scenario.adjust,
                                  designs=designs)
            for c, v in zip(family, found, strict=True):
                if c.name not in stops and v.verdict in SETTLED:
                    stops[c.name] = (v.verdict, n)
        if len(stops) == len(family):
            break
    out = []
    for c in family:
        verdict, seeds = stops.get(c.name, ("unresolved", LAST))
        out.append((verdict, seeds, false(verdict, c, truth[c.name])))
    return out


def run(job: tuple[int, int, int, int]) -> tuple[int, list[list[tuple[str, int, bool]]]]:
    index, chunk, studies, seed = job
    rng = np.random.default_rng([seed, index, chunk])
    return index, [one_study(rng, SCENARIOS[index]) for _ in range(studies)]


def summary(results: list[list[tuple[str, int, bool]]]) -> dict[str, float]:
    """False-verdict rates per claim and for the family, and the seeds used."""
    n = len(results)
    out: dict[str, float] = {"studies": n}
    for i, name in enumerate(("contrast", "compare", "at_least")):
        out[f"{name} false"] = sum(r[i][2] for r in results) / n
        out[f"{name} settled"] = sum(r[i][0] in SETTLED for r in results) / n
        out[f"{name} mean seeds"] = sum(r[i][1] for r in results) / n
        settled = [r[i][1] for r in results if r[i][0] in SETTLED]
        out[f"{name} mean seeds when settled"] = sum(settled) / len(settled) if settled else math.nan
    out["family false"] = sum(any(c[2] for c in r) for r in results) / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", help="scenarios whose names contain one of these ';'-separated words")
    args = parser.parse_args()
    chosen = [i for i, s in enumerate(SCENARIOS) if args.only is None or any(w in s.name for w in args.only.split(";"))]
    began = time.perf_counter()
    size = 100  # studies per job
    jobs = [(i, c, min(size, args.studies - c * size), args.seed) for i in chosen
            for c in range(math.ceil(args.studies / size))]
    found: dict[int, list[list[tuple[str, int, bool]]]] = {i: [] for i in chosen}
    with ProcessPoolExecutor(args.workers) as pool:
        for index, results in pool.map(run, jobs):
            found[index].extend(results)
    mc = 1.96 * math.sqrt(0.05 * 0.95 / args.studies)
    print(f"sequential claims, looks after every seed from {FIRST} to {LAST} (each at "
          f"{100 * Design(FIRST, LAST).look_level():.2f}%), {args.studies} studies per row "
          f"(95% Monte-Carlo margin at 5%: +-{100 * mc:.1f} points); {time.perf_counter() - began:.0f} s")
    print("| scenario | false: contrast / compare / at_least / any | settled by 20 (contrast / compare) | "
          "mean seeds used (contrast / compare) |")
    print("| --- | --- | --- | --- |")
    table = {}
    for i in chosen:
        scenario, s = SCENARIOS[i], summary(found[i])
        table[scenario.name] = s
        print(f"| {scenario.name} | {100 * s['contrast false']:.1f}% / {100 * s['compare false']:.1f}% / "
              f"{100 * s['at_least false']:.1f}% / {100 * s['family false']:.1f}% | "
              f"{100 * s['contrast settled']:.0f}% / {100 * s['compare settled']:.0f}% | "
              f"{s['contrast mean seeds']:.1f} / {s['compare mean seeds']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
