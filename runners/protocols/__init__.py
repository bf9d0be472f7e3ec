"""Ground-truth protocols: a registry from ``protocol`` to the module's ``Protocol`` (``run`` measures actual
effects, ``metrics`` scores an estimator against them).

``run`` maps (spec, Problem, the estimator rankings it follows by label, seed) to a GroundTruth: per
retraining repeat, the measured change of every selected test point for every item (a training point or a
group), measure(retrained without it) - measure(the same retraining with nothing removed) (LANGUAGE.md).
A new protocol is one module here plus one entry in ``PROTOCOLS`` (and its spec class in
inflang/spec/protocols.py, added to ``AnyProtocol``).
"""

from __future__ import annotations

from runners.protocols import brittleness, group, lds, loo, pbrf
from runners.protocols.common import GroundTruth, Problem, Protocol, RetrainSetup, Scoring

PROTOCOLS: dict[str, Protocol] = {
    "loo": loo.PROTOCOL,
    "pbrf": pbrf.PROTOCOL,
    "group": group.PROTOCOL,
    "lds": lds.PROTOCOL,
    "brittleness": brittleness.PROTOCOL,
}

__all__ = ["PROTOCOLS", "GroundTruth", "Problem", "Protocol", "RetrainSetup", "Scoring"]
