"""``inflang run --until-settled``: after the study's declared seeds, add seeds round by round to the sweep points
that unsettled claims read, and judge those claims sequentially (``inflang.results.sequential``) after every round.

A round raises every point of every unresolved claim to one seed more than the claim's look has, records the new
totals (``seed_additions``) before anything runs, then runs the study as an ordinary run: the added seeds are
ordinary cells (content-hashed; a kill -9 resumes from the recorded totals; a later plain run keeps them). It
stops when no claim is unresolved below ``--max-seeds`` (a claim with a failed cell at its next seed gets no
more seeds, and the stop says which), or when the next round's measured price would pass the time budget.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from inflang.compiling.validate import LoadedStudy, point_key, with_repeats
from inflang.errors import StudyError, UsageError
from inflang.results.claims import claim_cells, definition
from inflang.results.power import MIN_SEEDS
from inflang.results.sequential import DEFAULT_MAX_SEEDS
from inflang.results.store import Store, cells_of, claim_rows, seed_seconds, sequential_designs
from inflang.spec.claims import Claim
from inflang.units import duration

SETTLED = ("supported", "contradicted", "negligible")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in '90s', '30m', '1.5h', '2d' or a plain number of seconds; ValueError otherwise."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if found is None or float(found.group(1)) <= 0:
        raise ValueError(f"'{text}' is not a duration (e.g. 90s, 30m, 2h)")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


@dataclass
class Rounds:
    """What a run until settled did."""

    rounds: int = 0  # rounds that added seeds
    cells_added: int = 0
    seconds: float = 0.0  # wall-clock seconds of the whole command
    stopped: str = ""  # why it stopped, in words


def next_targets(claims: Sequence[Claim], looks: dict[str, tuple[str, int]], last: int,
                 cells: Sequence[tuple[str, dict[str, Any]]], have: dict[str, int],
                 failed: Mapping[str, int] | None = None) -> tuple[dict[str, int], list[str]]:
    """Sweep point -> seeds in all for the next round: every point of every sequential claim still unresolved
    at a look below ``last`` seeds goes to one seed more than that look (``looks``: claim -> (verdict, seeds of
    its look); points that already have them are left out). ``have``: the seeds each point has now;
    ``failed``: point -> the lowest repeat whose cell failed there. A claim reading a point whose failed repeat
    is within its next look gets no seeds (its looks cannot pass the failed seed): those claims are returned
    beside the targets."""
    params = dict(cells)
    targets: dict[str, int] = {}
    blocked: list[str] = []
    for claim in claims:
        verdict, look = looks.get(claim.name, ("", last))
        if verdict != "unresolved" or look >= last:
            continue
        points = {point_key(params[cell]) for cell in claim_cells(claim, cells)}
        if any((failed or {}).get(key, last) <= look for key in points):  # repeat ``look`` is its next seed
            blocked.append(claim.name)
            continue
        for key in points:
            if have.get(key, 0) < look + 1:
                targets[key] = max(targets.get(key, 0), look + 1)
    return targets, blocked


def finished(looks: dict[str, tuple[str, int]], last: int, blocked: Sequence[str] = ()) -> str:
    """Why no round follows, in words, when no point needs a seed (``looks`` and ``blocked`` as for
    ``next_targets``)."""
    at_last = [c for c, (verdict, look) in looks.items() if verdict == "unresolved" and look >= last]
    said = [f"{len(at_last)} claim{'s' if len(at_last) != 1 else ''} still unresolved at the last look ({last} "
            "seeds)"] if at_last else []
    return "; ".join(said) or ("no claim can add a look" if blocked else "no claim is unresolved")


def blocked_note(blocked: Sequence[str]) -> str:
    """What a stop message adds for the claims a failed cell keeps from their next look."""
    if not blocked:
        return ""
    return (f"; {len(blocked)} unresolved claim{'s' if len(blocked) != 1 else ''} got no seeds, a cell having "
            f"failed (above) at the next seed of a point {'they read' if len(blocked) != 1 else 'it reads'}: "
            + ", ".join(f"'{c}'" for c in blocked))


def seeds_per_point(loaded: LoadedStudy) -> dict[str, int]:
    """Sweep point (``point_key``) -> the seeds (cells) the study has there."""
    per_point: dict[str, int] = {}
    for cell in loaded.cells:
        per_point[point_key(cell.params)] = per_point.get(point_key(cell.params), 0) + 1
    return per_point


def declared_seeds(loaded: LoadedStudy) -> int:
    """The fewest seeds the study declares at a sweep point (``repeats``, or a swept ``repeats``)."""
    return min(seeds_per_point(loaded).values(), default=0)


def check(loaded: LoadedStudy, max_seeds: int | None) -> None:
    """What the study file alone decides: it has claims, at least ``MIN_SEEDS`` seeds at every point, and no
    more than ``max_seeds``. Raises StudyError (positioned) or UsageError."""
    study = loaded.study
    if not study.claims:
        raise StudyError.at(loaded.document.position(("claims",)), "claims",
                            "--until-settled adds seeds for claims, and the study declares none")
    first = declared_seeds(loaded)
    if first < MIN_SEEDS:
        path = ("repeats",) if "repeats" in loaded.document.data else ("sweep", "repeats")
        raise StudyError.at(loaded.document.position(path, True), ".".join(path),
                            f"--until-settled needs at least {MIN_SEEDS} seeds at every sweep point (found {first}): "
                            "its first look is an interval over seeds")
    if max_seeds is not None and max_seeds < first:
        raise UsageError(f"--max-seeds {max_seeds} is below the seeds the study declares ({first})")


def start(loaded: LoadedStudy, store: Store, max_seeds: int | None) -> tuple[int, int]:
    """Check the study (``check``) and record its claims' sequential design: looks from its declared seeds to
    ``max_seeds`` (default ``DEFAULT_MAX_SEEDS``, or the declared seeds when more); a claim's design, once
    recorded, stays. Returns the first and last looks of the claims recorded now."""
    check(loaded, max_seeds)
    study, first = loaded.study, declared_seeds(loaded)
    declared = [(c.name, definition(c)) for c in study.claims]
    with store.reading() as con:
        recorded = sequential_designs(con, study.study)
    fixed = {recorded[k][1] for k in declared if k in recorded}
    last = max_seeds if max_seeds is not None else (min(fixed) if fixed else max(DEFAULT_MAX_SEEDS, first))
    if fixed and fixed != {last}:
        raise UsageError(f"--max-seeds {last}: the claims of {study.study} are judged with looks up to "
                         f"{'/'.join(map(str, sorted(fixed)))} seeds, fixed by their first --until-settled run; "
                         "changing it after looking would void the design (leave --max-seeds out)")
    if last < first:
        raise UsageError(f"the claims' sequential design, recorded by the first --until-settled run of "
                         f"{study.study}, ends at {last} seeds, and the study now declares {first}: seeds past a "
                         "design's last look are not read")
    store.start_sequential(study.study, declared, first, last)
    return first, last


def run_until_settled(loaded: LoadedStudy, store: Store, run: Callable[[LoadedStudy], Any],
                      budget: float | None, max_seeds: int | None,
                      notice: Callable[[str], None] = lambda text: None, workers: int = 1) -> Rounds:
    """Run the study, then rounds of added seeds until its claims settle (``run``: one ordinary run of a study
    with the cells given, which evaluates the claims; it returns the scheduler's summary). ``budget``: seconds of
    wall-clock time for the whole command (None: no limit); ``workers``: the processes a round's cells share."""
    began = time.monotonic()
    _, last = start(loaded, store, max_seeds)
    name = loaded.study.study
    done = Rounds()
    before: dict[str, int] | None = None
    while True:
        current = with_repeats(loaded, store.added_repeats(name))
        summary = run(current)
        have = seeds_per_point(current)
        failed: dict[str, int] = {}
        for cell in current.cells:
            if summary.cell_status.get(cell.cell_id, ("", None))[0] == "failed":
                key = point_key(cell.params)
                failed[key] = min(failed.get(key, cell.repeat), cell.repeat)
        with store.reading() as con:
            cells = cells_of(con, name)
            designs = sequential_designs(con, name)
        rows = {r["claim"]: r for r in claim_rows(store.path, [name]) if r["max_seeds"] is not None}
        looks: dict[str, tuple[str, int]] = {}
        for c in loaded.study.claims:
            design = designs.get((c.name, definition(c)))
            if c.name in rows and design is not None:
                looks[c.name] = ("frozen" if design[2] is not None else rows[c.name]["verdict"],
                                 design[0] + (rows[c.name]["seeds_added"] or 0))
        store.stop_sequential(name, [(c.name, definition(c), looks[c.name][1]) for c in loaded.study.claims
                                     if c.name in looks and looks[c.name][0] in SETTLED])
        targets, blocked = next_targets(loaded.study.claims, looks, last, cells, have, failed)
        if not targets:
            done.stopped = finished(looks, last, blocked) + blocked_note(blocked)
            break
        if targets == before:
            done.stopped = "the last round added no seed to the claims' looks" + blocked_note(blocked)
            break
        price = _price(store, name, cells, targets, have)
        wall = None if price is None else price / max(1, min(workers, sum(n - have.get(k, 0)
                                                                           for k, n in targets.items())))
        spent = time.monotonic() - began
        if budget is not None and (spent >= budget or wall is not None and spent + wall > budget):
            done.stopped = f"the time budget: {duration(spent)} spent of {duration(budget)}" + (
                f", and the next round would take about {duration(wall)}" if wall is not None else "") + \
                blocked_note(blocked)
            break
        added = sum(n - have.get(k, 0) for k, n in targets.items())
        notice(f"round {done.rounds + 1}: {added} seed cell{'s' if added != 1 else ''} at {len(targets)} sweep "
               f"point{'s' if len(targets) != 1 else ''}" + (f" (about {duration(wall)})" if wall else ""))
        store.add_repeats(name, targets)
        done.rounds += 1
        done.cells_added += added
        before = targets
    done.seconds = time.monotonic() - began
    return done


def _price(store: Store, study: str, cells: Sequence[tuple[str, dict[str, Any]]], targets: dict[str, int],
           have: dict[str, int]) -> float | None:
    """The measured seconds of a round: per point, its added seeds times the mean seconds of one of its seeds."""
    total = 0.0
    with store.reading() as con:
        for key, n in targets.items():
            ids = [c for c, p in cells if point_key(p) == key]
            per_seed = seed_seconds(con, study, ids)
            if per_seed is None:
                return None
            total += (n - have.get(key, 0)) * per_seed
    return total
