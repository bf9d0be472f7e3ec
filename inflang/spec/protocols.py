"""``ground_truth:`` -- how the actual effect of a removal is measured, discriminated by ``protocol``.

actual = measure(retrained without the point or group) - measure(the same retraining with nothing removed):
the control run rides in the same batch, so drift from non-convergence cancels (LANGUAGE.md).

A protocol is one spec class here and one module in ``runners/protocols`` (with its registry entry). The
spec class answers everything the language side asks of a protocol, so that ``study.py`` and ``plan.py``
name none: ``problems`` (its rules against the rest of the study), ``rankings`` (the estimators whose
rankings choose what it removes), ``items`` and ``extra_models`` (what ``plan`` counts), ``converged`` and
``warm``/``start_from`` (how it retrains).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from inflang import metrics as catalogue
from inflang.spec.base import Spec

Measure = Literal["test_loss", "margin", "param_change_norm"]
Problem = tuple[tuple[str | int, ...], str, str | None]


@dataclass(frozen=True)
class StudyFacts:
    """What a protocol's rules need to know about the rest of a (cell's) study."""

    n_train: int  # points trained on
    test_points: int  # test points a cell measures
    classes: int  # 1 for regression
    regression: bool
    batch_norm: bool
    labels: tuple[str, ...]  # estimator labels
    estimators: tuple[str, ...]  # estimator names, in the same order
    dropout: float = 0.0  # the model's dropout rate


@dataclass(frozen=True)
class Ranking:
    """An estimator ranking a protocol follows: where its label is in the file (for errors), how it is used,
    which label (None when the file names none)."""

    where: tuple[str | int, ...]
    select: str
    label: str | None


class RemovalSpec(Spec):
    """Which training points are removed (each one retrained without)."""

    select: Literal["all", "top_k", "random", "percentile"] = Field(
        "all", description="all | top_k | random | percentile")
    k: int = Field(40, ge=1, description="points per test point for top_k and percentile; in all for random")
    by: str | None = Field(None, description="top_k, percentile: the label of the estimator whose ranking is used")
    rank_by: Literal["abs", "signed"] = Field("abs", description="rank by |estimate| or by estimate")
    percentile: float = Field(30.0, ge=0, le=100, description="percentile: the k points around this percentile")

    @property
    def ranked(self) -> bool:
        return self.select in ("top_k", "percentile")

    def count(self, facts: StudyFacts) -> int:
        """Points retrained without (for rankings an upper bound: the union over test points)."""
        if self.select == "all":
            return facts.n_train
        if self.select == "random":
            return min(self.k, facts.n_train)
        return min(facts.n_train, self.k * facts.test_points)

    def problems(self, facts: StudyFacts) -> list[Problem]:
        found: list[Problem] = []
        if not self.ranked and self.by is not None:
            found.append((("ground_truth", "removals", "by"), "'by' is only used with select: top_k or percentile",
                          None))
        if self.select != "all" and self.k > facts.n_train:
            found.append((("ground_truth", "removals", "k"),
                          f"k = {self.k} is larger than the training set ({facts.n_train} points)", None))
        return found

    def rankings(self, labels: tuple[str, ...] = ()) -> list[Ranking]:
        return [Ranking(("ground_truth", "removals", "by"), self.select, self.by)] if self.ranked else []


class Retraining(Spec):
    """How models are retrained: the fields every retraining protocol shares."""

    steps: int | None = Field(None, ge=1, description="retraining steps; default the original number of steps")
    optimizer: Literal["sgd", "adam"] | None = Field(
        None, description="warm-start update rule; null = sgd with momentum 0.9 (the training's own sgd rule "
        "when it trained with sgd); scratch retraining replays the training's")
    lr: float | None = Field(None, gt=0, description="retraining learning rate; null = the training lr")
    momentum: float | None = Field(None, ge=0, lt=1, description="retraining momentum (sgd); null = the training's")
    repeats: int = Field(1, ge=1, le=1000, description="retraining seeds per removal; the mean is stored, and "
                         ">= 2 also stores the split-half noise ceiling")
    batch: Literal["auto"] | Annotated[int, Field(ge=2)] = Field(
        "auto", description="models retrained at once (control included); auto = as many as the memory budget allows")
    measure: Measure = Field(
        "test_loss", description="test_loss | margin (true-class logit minus the largest other logit) | "
        "param_change_norm (||theta_removed - theta_control||, no test points; loo and pbrf)")
    resolution_probes: int = Field(
        4, ge=0, le=64, description="extra controls per repeat, started from the start perturbed at the dtype's "
        "rounding, whose spread is the ground truth's resolution (0 = not measured)")

    grouped: ClassVar[bool] = False  # results per group of training points rather than per point

    def warm_rule(self, trained_with: str, trained_momentum: float) -> tuple[str, float]:
        """(optimizer, momentum) of a warm start. With ``optimizer`` unset: SGD, with the training's momentum
        when training used SGD and heavy-ball momentum 0.9 otherwise. Measured on the quickstart and the
        small-CNN study (docs/language.md, Resolution), it keeps rounding differences from growing (resolution
        at machine precision, where Adam's normalised steps amplify them to ~1e-5 in a test loss) and comes
        closer to converged leave-one-out than Adam or plain SGD in the same number of steps. A ``momentum``
        given applies to SGD; an explicit ``optimizer: sgd`` keeps the training's momentum (0 after Adam)."""
        if self.optimizer == "adam":
            return "adam", 0.0
        if self.momentum is not None:
            return "sgd", self.momentum
        if trained_with == "sgd":
            return "sgd", trained_momentum
        return "sgd", 0.0 if self.optimizer == "sgd" else 0.9

    @property
    def probes_per_repeat(self) -> int:
        """Resolution probes each retraining repeat trains beside its control (0 when resolution is off)."""
        return self.resolution_probes

    @property
    def start_from(self) -> str:
        """'optimum' (warm start from the trained model) or 'scratch' (the original initialisation)."""
        return str(getattr(self, "start", "optimum"))

    @property
    def converged(self) -> bool:
        """Whether refits are solved to convergence (no retraining optimizer, steps or schedule)."""
        return False

    def refit_workload(self) -> dict[str, object] | None:
        """Where converged refits minimise another objective than leave-one-out's: what calibrating them needs
        to know (``plan`` adds it to the task's workload, so they are priced by their own measured rate,
        ``runners.calibrate``); None for leave-one-out."""
        return None

    def rankings(self, labels: tuple[str, ...] = ()) -> list[Ranking]:
        """The estimator rankings that choose what this protocol removes (none by default), given the
        study's estimator labels."""
        return []

    def ranking_order(self, followed: tuple[str, ...]) -> list[str]:
        """The rankings in the order the protocol's results refer to them, given the estimate tasks it
        followed (in the task's canonical order; the spec's ``by`` fields hold those tasks' hashes)."""
        return list(followed)

    @abstractmethod
    def items(self, facts: StudyFacts) -> int:
        """Models retrained per repeat besides the control and the probes (an upper bound where they follow
        a ranking); every protocol states it (pydantic's model metaclass is an ABCMeta)."""

    def extra_models(self, facts: StudyFacts) -> int:
        """Models solved besides the retraining (the decomposition's converged refits)."""
        return 0

    # (first, second, ground truth's) metric of the CLI's summary table for a study whose ground truths ran
    # this protocol (one set of columns per study: the first protocol in the union's order that states its own)
    summary_metrics: ClassVar[tuple[str, str, str]] = ("spearman", "pearson", "noise_ceiling_spearman")

    def estimator_metrics(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The per-test-point metrics each estimator gets, given the study's ``metrics.names``."""
        return names

    def ground_truth_metrics(self) -> tuple[str, ...]:
        """Metrics of the ground truth itself (estimator NULL): with repeats >= 2 its noise ceilings and
        reliabilities, with resolution probes its resolution and the fraction of effects below it."""
        found = catalogue.ceiling_metrics() if self.repeats >= 2 else ()
        return found + (("resolution", "below_resolution") if self.probes_per_repeat else ())

    def problems(self, facts: StudyFacts) -> list[Problem]:
        """This protocol's rules against the rest of the study: (path, message, hint) per problem."""
        found: list[Problem] = []
        if self.measure == "param_change_norm" and self.grouped:
            found.append((("ground_truth", "measure"), "param_change_norm compares single removals; use it "
                          "with protocol: loo or pbrf", None))
        if facts.regression and self.measure == "margin":
            found.append((("ground_truth", "measure"), "margin compares class logits, and the dataset has "
                          "real-valued targets (squared-error regression)", "use measure: test_loss"))
        return found

    def retrain_steps(self, original_steps: int) -> int:
        if self.steps is not None:
            return self.steps
        return original_steps


def _newton_with_dropout(field: str, dropout: float) -> Problem:
    """Newton refits (``solver: newton``, ``decompose``) refused where the model has dropout."""
    return (("ground_truth", field), f"Newton refits converge on a deterministic objective; with dropout "
            f"{dropout:g} the model trains on a random one, so there is no refit to converge to",
            "use solver: gradient (the default), or model.dropout: 0")


class LooProtocol(Retraining):
    """Leave-one-out: retrain with one training point's weight set to 0 (n unchanged)."""

    protocol: Literal["loo"]
    start: Literal["optimum", "scratch"] = Field(
        "optimum", description="optimum = warm start from the trained model; scratch = same init and batch order")
    fraction: float | None = Field(None, gt=0, le=10, description="retraining steps as a fraction of the original")
    removals: RemovalSpec = Field(default_factory=RemovalSpec)
    solver: Literal["gradient", "newton"] = Field(
        "gradient", description="gradient: the retraining steps configured here; newton: solve every refit from "
        "the optimum to |grad| <= tol (small models)")
    tol: float | None = Field(None, gt=0, description="newton: gradient-norm tolerance (default 1e-10 in float64, "
                              "1e-5 in float32)")
    max_iter: int = Field(100, ge=1, description="newton: iterations at most")
    damping: float = Field(0.0, ge=0, description="newton: damping of the chord matrix C + damping I (C the "
                           "Hessian, or its Gauss-Newton matrix above 3,000 parameters), used only when C is not "
                           "positive definite; the solution does not depend on it")
    decompose: bool = Field(False, description="also solve the converged LOO and the PBRF for every removal, and "
                            "split the gap between influence and this retraining into terms (Bae et al. 2022)")
    pbrf_damping: float = Field(0.001, ge=0, description="decompose: the PBRF's proximity damping (match the "
                                "estimators' damping)")

    @model_validator(mode="after")
    def _steps_or_fraction(self) -> LooProtocol:
        if self.steps is not None and self.fraction is not None:
            raise ValueError("give either 'steps' or 'fraction', not both")
        if self.solver == "gradient":
            if self.damping and not self.decompose:
                raise ValueError("'damping' is only used with solver: newton or decompose: true")
        else:
            if self.start != "optimum":
                raise ValueError("solver: newton refits from the optimum; use start: optimum")
            if self.repeats != 1:
                raise ValueError("solver: newton is deterministic; use repeats: 1")
            if self.decompose:
                raise ValueError("decompose compares the configured retraining with converged refits; "
                                 "use solver: gradient with it")
        return self

    def retrain_steps(self, original_steps: int) -> int:
        if self.fraction is not None:
            return max(1, int(round(self.fraction * original_steps)))
        return super().retrain_steps(original_steps)

    @property
    def converged(self) -> bool:
        return self.solver == "newton"

    def rankings(self, labels: tuple[str, ...] = ()) -> list[Ranking]:
        return self.removals.rankings()

    def estimator_metrics(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """decompose: also influence against the PBRF and against the retraining (``influence_vs_*``)."""
        return names + (catalogue.gap_metrics("estimator") if self.decompose else ())

    def ground_truth_metrics(self) -> tuple[str, ...]:
        """decompose: also the gaps between its own responses (``pbrf_vs_converged_loo_*``, ...)."""
        return super().ground_truth_metrics() + (catalogue.gap_metrics("ground_truth") if self.decompose else ())

    def items(self, facts: StudyFacts) -> int:
        return self.removals.count(facts)

    def extra_models(self, facts: StudyFacts) -> int:
        """decompose: every removal (and the control and probes) refitted as converged LOO, and as the PBRF."""
        items = self.items(facts)
        return (items + 1 + self.probes_per_repeat) + (items + 1) if self.decompose else 0

    def problems(self, facts: StudyFacts) -> list[Problem]:
        found = super().problems(facts) + self.removals.problems(facts)
        if facts.batch_norm and (self.solver == "newton" or self.decompose):
            found.append((("ground_truth", "solver" if self.solver == "newton" else "decompose"),
                          "Newton refits minimise the evaluation-mode objective; BatchNorm trains on batch "
                          "statistics and evaluates on running ones", "use solver: gradient (the default) or "
                          "norm: group"))
        if facts.dropout and (self.solver == "newton" or self.decompose):
            found.append(_newton_with_dropout("solver" if self.solver == "newton" else "decompose", facts.dropout))
        return found


class PbrfProtocol(Retraining):
    """The proximal Bregman response function (Bae, Ng, Lo, Ghassemi & Grosse 2022), from theta_s:

    minimise (1/N) sum_i D(h(theta, x_i), h(theta_s, x_i)) + (weight_decay/2) ||theta - theta_s||^2
             - (1/N) loss(z_m, theta) + (damping/2) ||theta - theta_s||^2,
    D the Bregman divergence of the cross-entropy in logit space. To first order the response is
    +(1/N) (G + (weight_decay + damping) I)^-1 g_m, G the Gauss-Newton matrix: exact influence with
    ``curvature: ggn`` and the same damping.
    """

    late_fields: ClassVar[tuple[str, ...]] = ("solver", "tol", "max_iter", "rtol")

    protocol: Literal["pbrf"]
    damping: float = Field(0.001, ge=0, description="proximity to theta_s (the lambda of Bae et al.)")
    removals: RemovalSpec = Field(default_factory=RemovalSpec)
    solver: Literal["gradient", "newton"] = Field(
        "gradient", description="gradient: the retraining steps configured here; newton: solve every refit from "
        "theta_s to |grad| <= tol (chord: the Gauss-Newton matrix; quasi-Newton steps from it above 3,000 "
        "parameters), each refit's convergence stored")
    tol: float | None = Field(None, gt=0, description="newton: gradient-norm tolerance (default 1e-10 in float64, "
                              "1e-5 in float32)")
    max_iter: int = Field(100, ge=1, description="newton: iterations at most; a refit that has not converged by "
                          "then is kept and reported (`refits.converged`, the refits_not_converged check)")
    rtol: float | None = Field(None, gt=0, lt=1, description="newton: each refit's tolerance relative to its "
                               "starting gradient norm (the removed point's gradient over N): rtol x that norm, "
                               "but not below tol (whose default is then 1e-15 in float64, 1e-7 in float32)")

    @model_validator(mode="after")
    def _newton_rules(self) -> PbrfProtocol:
        if self.solver == "newton" and self.repeats != 1:
            raise ValueError("solver: newton is deterministic; use repeats: 1")
        if self.solver == "gradient" and (self.tol is not None or self.max_iter != 100 or self.rtol is not None):
            raise ValueError("'tol', 'rtol' and 'max_iter' are only used with solver: newton")
        return self

    @property
    def converged(self) -> bool:
        return self.solver == "newton"

    def refit_workload(self) -> dict[str, object] | None:
        return {"protocol": "pbrf", "damping": self.damping, "max_iter": self.max_iter}

    def rankings(self, labels: tuple[str, ...] = ()) -> list[Ranking]:
        return self.removals.rankings()

    def items(self, facts: StudyFacts) -> int:
        return self.removals.count(facts)

    def problems(self, facts: StudyFacts) -> list[Problem]:
        found = super().problems(facts) + self.removals.problems(facts)
        if facts.batch_norm:
            found.append((("ground_truth", "protocol"), "pbrf's Bregman objective needs one function of the "
                          "parameters; BatchNorm trains on batch statistics and evaluates on running ones",
                          "use norm: group, or protocol: loo"))
        if facts.dropout and self.solver == "newton":
            found.append(_newton_with_dropout("solver", facts.dropout))
        return found


class GroupSpec(Spec):
    """Which groups of training points are removed together."""

    count: int = Field(20, ge=1, description="how many groups")
    size: int = Field(10, ge=1, description="points per group")
    select: Literal["random", "top_k", "by_class"] = Field(
        "random", description="random points | the next `size` points of an estimator's ranking | one class each")
    by: str | None = Field(None, description="top_k: the label of the estimator whose ranking is used")
    rank_by: Literal["abs", "signed"] = Field("abs", description="top_k ranks by mean |estimate| or mean estimate")


MeanOver = Literal["kept", "all"]
MEAN_OVER_HELP = ("kept: each retrained model averages its loss over the points it keeps (a training set of its "
                  "own, as published); all: over all n points, removed ones weighing 0 (leave-one-out's convention)")


class GroupProtocol(Retraining):
    """Group removal (Koh, Ang, Teo & Liang 2019): retrain without each group; estimate = sum of the members'."""

    protocol: Literal["group"]
    start: Literal["optimum", "scratch"] = Field("optimum", description="optimum (warm start) or scratch")
    groups: GroupSpec = Field(default_factory=GroupSpec)
    mean_over: MeanOver = Field("kept", description=MEAN_OVER_HELP)

    grouped: ClassVar[bool] = True

    def rankings(self, labels: tuple[str, ...] = ()) -> list[Ranking]:
        groups = self.groups
        return [Ranking(("ground_truth", "groups", "by"), "top_k", groups.by)] if groups.select == "top_k" else []

    def items(self, facts: StudyFacts) -> int:
        return self.groups.count

    def problems(self, facts: StudyFacts) -> list[Problem]:
        found = super().problems(facts)
        g = self.groups
        if g.select != "top_k" and g.by is not None:
            found.append((("ground_truth", "groups", "by"), "'by' is only used with select: top_k", None))
        if facts.regression and g.select == "by_class":
            found.append((("ground_truth", "groups", "select"), "by_class needs classes, and the dataset has "
                          "real-valued targets (squared-error regression)", None))
        if g.size >= facts.n_train:
            found.append((("ground_truth", "groups", "size"),
                          f"a group of {g.size} leaves nothing of the {facts.n_train} training points", None))
        elif g.select == "top_k" and g.count * g.size > facts.n_train:
            found.append((("ground_truth", "groups", "count"),
                          f"{g.count} groups of {g.size} ranked points need {g.count * g.size} training points; "
                          f"the split has {facts.n_train}", None))
        elif g.select == "by_class" and g.size > facts.n_train // facts.classes // 2:
            found.append((("ground_truth", "groups", "size"),
                          f"groups of one class hold at most about {facts.n_train // facts.classes // 2} points "
                          "here (half of a class)", None))
        return found


class LdsProtocol(Retraining):
    """The linear datamodeling score (Park et al. 2023): train on `subsets` random subsets, each keeping a
    `fraction` of the training set; per test point, Spearman between the measured change and the summed
    estimates of the removed points (equivalently, of the kept points with the opposite sign)."""

    protocol: Literal["lds"]
    start: Literal["optimum", "scratch"] = Field("scratch", description="scratch (as Park et al.) or optimum")
    subsets: int = Field(50, ge=3, description="random subsets M")
    fraction: float = Field(0.5, gt=0, lt=1, description="alpha: the fraction of the training set each keeps")
    nan: Literal["drop", "fail"] = Field(
        "drop", description="subsets whose retraining diverges: drop them (the count is stored in "
        "ground_truths.dropped; the rest are counted in n_pairs) or fail the cell")
    mean_over: MeanOver = Field("kept", description=MEAN_OVER_HELP)

    grouped: ClassVar[bool] = True

    def items(self, facts: StudyFacts) -> int:
        return self.subsets

    def problems(self, facts: StudyFacts) -> list[Problem]:
        found = super().problems(facts)
        if int(self.fraction * facts.n_train) < facts.classes:
            found.append((("ground_truth", "fraction"), f"subsets of {int(self.fraction * facts.n_train)} points "
                          f"are too small for {facts.classes} classes", None))
        return found


class BrittlenessProtocol(Retraining):
    """Brittleness (Ilyas et al. 2022; Yang et al. 2023): per test point, the smallest k of a grid such that
    removing the k training points that support its prediction most, in the order an estimator ranks them,
    flips the prediction after retraining; beside a random order as the baseline (runners/protocols/
    brittleness.py)."""

    protocol: Literal["brittleness"]
    start: Literal["optimum", "scratch"] = Field("optimum", description="optimum (warm start) or scratch")
    k: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32], min_length=1,
                                                 description="the grid of removal counts tried; max(k) is where "
                                                 "a point counts as not flipped")
    by: list[str] | None = Field(None, description="the labels of the estimators whose rankings are tried; "
                                 "default every estimator of the study")
    random: bool = Field(True, description="also try a random order (the baseline)")

    def ranked_labels(self, labels: tuple[str, ...]) -> list[str]:
        return list(self.by) if self.by is not None else list(labels)

    def ranking_order(self, followed: tuple[str, ...]) -> list[str]:
        return list(self.by) if self.by is not None else list(followed)

    summary_metrics: ClassVar[tuple[str, str, str]] = ("flipped", "flip_k", catalogue.random_baseline("flipped"))
    FLIP_METRICS: ClassVar[tuple[str, ...]] = ("flip_k", "flip_k_capped", "flipped")

    def estimator_metrics(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return self.FLIP_METRICS

    def ground_truth_metrics(self) -> tuple[str, ...]:
        """The random order's baselines, beside the ceilings and resolution every protocol may store."""
        random = tuple(map(catalogue.random_baseline, self.FLIP_METRICS)) if self.random else ()
        return super().ground_truth_metrics() + random

    def rankings(self, labels: tuple[str, ...] = ()) -> list[Ranking]:
        return [Ranking(("ground_truth", "by", i) if self.by is not None else ("ground_truth",), "brittleness", label)
                for i, label in enumerate(self.ranked_labels(labels))]

    def items(self, facts: StudyFacts) -> int:
        sources = len(self.ranked_labels(facts.labels)) + int(self.random)
        return facts.test_points * sources * len(set(self.k))

    def problems(self, facts: StudyFacts) -> list[Problem]:
        found = super().problems(facts)
        if self.measure != "test_loss":
            found.append((("ground_truth", "measure"), "brittleness measures prediction flips itself; it takes no "
                          "measure", "leave out measure"))
        if facts.regression:
            found.append((("ground_truth", "protocol"), "brittleness flips class predictions, and the dataset has "
                          "real-valued targets (squared-error regression)", None))
        if max(self.k) > facts.n_train:
            found.append((("ground_truth", "k"), f"k = {max(self.k)} is more than the {facts.n_train} training "
                          "points", None))
        if not self.ranked_labels(facts.labels) and not self.random:
            found.append((("ground_truth", "random"), "no ranking to try: name estimators in 'by' or keep the "
                          "random baseline", None))
        if self.by is not None:
            for i, label in enumerate(self.by):
                if label in self.by[:i]:
                    found.append((("ground_truth", "by", i), f"'{label}' is named twice", None))
        return found


AnyProtocol = LooProtocol | PbrfProtocol | GroupProtocol | LdsProtocol | BrittlenessProtocol
GroundTruthSpec = Annotated[AnyProtocol, Field(discriminator="protocol")]
