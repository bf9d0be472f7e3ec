"""One peer library's estimator on a problem file written by ``benchmarks/estimators.py``.

Runs in a separate environment that has the peers installed (dattri, kronfluence, captum; not project
dependencies): ``PEERS_PYTHON benchmarks/peers.py PROBLEM.pt PEER ESTIMATOR OUT.json``. Prints nothing;
writes {"seconds" (the second of two runs), "peak_mb", "scores"} with scores in inflang's convention
([test, train], the predicted change of the test loss when the training point is removed, divided by n),
or {"error": "..."}.

Each peer gets the objective inflang uses: the mean cross-entropy over the training set, with weight decay
(weight_decay/2 ||theta||^2) passed as the extra multiple of the identity each library adds to its
curvature ("regularization" or "damping"), since per-example gradients must not contain it.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def build(problem: dict[str, Any]) -> nn.Module:
    """The benchmark's model as plain nn.Sequential layers, named as inflang names them."""
    arch, act = problem["arch"], ACTIVATIONS[problem["activation"]]
    layers: list[nn.Module] = []
    if arch["kind"] == "cnn":  # inflang's cnn: 3x3 stride-2 convolutions, then a linear layer
        c_in, h, w = arch["shape"]
        for _ in range(arch["depth"]):
            layers += [nn.Conv2d(c_in, arch["channels"], 3, stride=2, padding=1), act()]
            c_in, h, w = arch["channels"], (h + 1) // 2, (w + 1) // 2
        layers += [nn.Flatten(), nn.Linear(c_in * h * w, arch["classes"])]
    else:
        sizes = arch["sizes"]
        for a, b in zip(sizes[:-2], sizes[1:-1], strict=True):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
    model = nn.Sequential(*layers).to(problem["x_train"].dtype)
    model.load_state_dict(problem["params"])
    return model.eval()


def loaders(problem: dict[str, Any], batch: int | None = None) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    n = len(problem["y_train"])
    train = DataLoader(TensorDataset(problem["x_train"], problem["y_train"]), batch_size=batch or n)
    test = DataLoader(TensorDataset(problem["x_test"], problem["y_test"]), batch_size=len(problem["y_test"]))
    return train, test


def dattri_task(problem: dict[str, Any], model: nn.Module, checkpoints: Any = None) -> Any:
    from dattri.task import AttributionTask

    def loss(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, x), y.long())

    return AttributionTask(loss_func=loss, model=model, checkpoints=checkpoints or model.state_dict())


def dattri_if(kind: str) -> Callable[[dict[str, Any]], Tensor]:
    def run(problem: dict[str, Any]) -> Tensor:
        from dattri.algorithm import influence_function as f

        s, wd, n = problem["settings"], problem["weight_decay"], len(problem["y_train"])
        model = build(problem)
        task = dattri_task(problem, model)
        if kind == "exact":
            attributor = f.IFAttributorExplicit(task=task, regularization=wd + s["damping"])
        elif kind == "cg":
            attributor = f.IFAttributorCG(task=task, regularization=wd + s["damping"], max_iter=s["max_iter"],
                                          tol=s["tol"])
        elif kind == "arnoldi":
            attributor = f.IFAttributorArnoldi(task=task, regularization=wd + s["damping"], proj_dim=s["top_k"],
                                               max_iter=s["arnoldi_dim"])
        elif kind == "lissa":  # dattri: h = v + (1 - d) h - H h / s, so d = (damping + weight_decay) / scale
            attributor = f.IFAttributorLiSSA(task=task, damping=(wd + s["damping"]) / s["scale"], scaling=s["scale"],
                                             recursion_depth=s["recursion_depth"], batch_size=s["batch_size"] or n)
        elif kind == "datainf":
            attributor = f.IFAttributorDataInf(task=task, regularization=wd + s["damping"])
        elif kind == "ekfac":
            attributor = f.IFAttributorEKFAC(task=task, damping=wd + s["damping"])
        else:
            raise ValueError(kind)
        train, test = loaders(problem)
        attributor.cache(train)
        return attributor.attribute(train, test).detach().T / n

    return run


def dattri_tracin(normalized: bool, checkpoints: bool) -> Callable[[dict[str, Any]], Tensor]:
    def run(problem: dict[str, Any]) -> Tensor:
        from dattri.algorithm.tracin import TracInAttributor

        model = build(problem)
        n = len(problem["y_train"])
        if checkpoints:
            ckpts, lrs = [c["params"] for c in problem["checkpoints"]], [c["lr"] for c in problem["checkpoints"]]
        else:
            ckpts, lrs = [problem["params"]], [1.0]
        task = dattri_task(problem, model, ckpts)
        attributor = TracInAttributor(task=task, weight_list=torch.tensor(lrs, dtype=problem["x_train"].dtype),
                                      normalized_grad=normalized)
        attributor.projector_kwargs = None  # exact gradient products (dattri projects to 512 dimensions by default)
        train, test = loaders(problem)
        scores = attributor.attribute(train, test).detach().T
        return scores if normalized else scores / n

    return run


def dattri_trak(problem: dict[str, Any]) -> Tensor:
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    model = build(problem)

    def f(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        logits = torch.func.functional_call(model, params, x)
        p = torch.softmax(logits, -1).gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
        return -(torch.log(p) - torch.log1p(-p)).sum()

    def correct(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        logits = torch.func.functional_call(model, params, x)
        return torch.softmax(logits, -1).gather(-1, y.long().unsqueeze(-1)).squeeze(-1)

    task = AttributionTask(loss_func=f, model=model, checkpoints=model.state_dict())
    s = problem["settings"]
    attributor = TRAKAttributor(task=task, correct_probability_func=correct, device="cpu",
                                regularization=s["damping"] or 1e-6,  # its kernel is solved, not pseudo-inverted
                                projector_kwargs={"proj_dim": s["proj_dim"], "device": "cpu"})
    train, test = loaders(problem)
    attributor.cache(train)
    return attributor.attribute(test).detach().T


def kronfluence(strategy: str) -> Callable[[dict[str, Any]], Tensor]:
    def run(problem: dict[str, Any]) -> Tensor:
        import tempfile

        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
        from torch.utils.data import TensorDataset

        class Classification(Task):
            def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> Tensor:
                x, y = batch
                logits = model(x)
                if sample:  # the true Fisher: labels drawn from the model
                    with torch.no_grad():
                        y = torch.multinomial(torch.softmax(logits.detach(), -1), 1).squeeze(-1)
                return nn.functional.cross_entropy(logits, y, reduction="sum")

            def compute_measurement(self, batch: Any, model: nn.Module) -> Tensor:
                x, y = batch
                return nn.functional.cross_entropy(model(x), y, reduction="sum")

        s, wd, n = problem["settings"], problem["weight_decay"], len(problem["y_train"])
        dtype = problem["x_train"].dtype
        if s["damping"] is None:
            raise ValueError("kronfluence's default damping is not per layer; give one")
        task = Classification()
        model = prepare_model(build(problem), task)
        with tempfile.TemporaryDirectory() as out:
            analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True, log_level=40, output_dir=out)
            train = TensorDataset(problem["x_train"], problem["y_train"])
            test = TensorDataset(problem["x_test"], problem["y_test"])
            factor_args = FactorArguments(strategy=strategy, use_empirical_fisher=s["fisher"] == "empirical",
                                          activation_covariance_dtype=dtype,
                                          gradient_covariance_dtype=dtype, per_sample_gradient_dtype=dtype,
                                          lambda_dtype=dtype)
            analyzer.fit_all_factors("f", train, per_device_batch_size=n, factor_args=factor_args,
                                     overwrite_output_dir=True)
            score_args = ScoreArguments(damping_factor=wd + s["damping"], per_sample_gradient_dtype=dtype,
                                        precondition_dtype=dtype, score_dtype=dtype)
            analyzer.compute_pairwise_scores("s", "f", test, train, per_device_query_batch_size=len(test),
                                             per_device_train_batch_size=n, score_args=score_args,
                                             overwrite_output_dir=True)
            scores = analyzer.load_pairwise_scores("s")["all_modules"]
        return scores.detach() / n

    return run


def captum_tracin(problem: dict[str, Any]) -> Tensor:
    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    model = build(problem)
    n = len(problem["y_train"])
    ckpts = problem["checkpoints"]

    def load(model_: nn.Module, path: Any) -> float:
        c = ckpts[int(path)]
        model_.load_state_dict(c["params"])
        return float(c["lr"])

    train = TensorDataset(problem["x_train"], problem["y_train"])
    tracin = TracInCP(model, train, checkpoints=[str(i) for i in range(len(ckpts))], checkpoints_load_func=load,
                      loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=n, sample_wise_grads_per_batch=True)
    return tracin.influence((problem["x_test"], problem["y_test"]), show_progress=False).detach() / n


def captum_if(kind: str) -> Callable[[dict[str, Any]], Tensor]:
    """captum's NaiveInfluenceFunction (explicit Hessian, all eigenvectors kept) and ArnoldiInfluenceFunction.
    captum's Hessian is that of the summed loss, n H, with hessian_reg on its diagonal: n (weight_decay +
    damping) makes (n H + reg)^-1 = (1/n) (H + weight_decay + damping)^-1, inflang's estimate as it stands."""

    def run(problem: dict[str, Any]) -> Tensor:
        import tempfile

        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction
        from captum.influence._core.influence_function import NaiveInfluenceFunction
        from torch.utils.data import TensorDataset

        s, wd, n = problem["settings"], problem["weight_decay"], len(problem["y_train"])
        model = build(problem)
        P = sum(p.numel() for p in model.parameters())
        train = TensorDataset(problem["x_train"], problem["y_train"])
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/model.pt"
            torch.save(model.state_dict(), path)

            def load(model_: nn.Module, checkpoint: str) -> float:
                model_.load_state_dict(torch.load(checkpoint, weights_only=True))
                return 1.0

            common = {"checkpoint": path, "checkpoints_load_func": load, "batch_size": n,
                      "loss_fn": nn.CrossEntropyLoss(reduction="none")}
            if kind == "exact":
                influence = NaiveInfluenceFunction(model, train, projection_dim=P, hessian_reg=n * (wd + s["damping"]),
                                                   hessian_inverse_tol=0.0, **common)
            else:
                influence = ArnoldiInfluenceFunction(model, train, projection_dim=s["top_k"],
                                                     arnoldi_dim=s["arnoldi_dim"],
                                                     hessian_reg=n * (wd + s["damping"]),
                                                     **common)
            scores = influence.influence((problem["x_test"], problem["y_test"]), show_progress=False)
        return scores.detach()

    return run


PEERS: dict[tuple[str, str], Callable[[dict[str, Any]], Tensor]] = {
    ("dattri", "exact"): dattri_if("exact"),
    ("dattri", "cg"): dattri_if("cg"),
    ("dattri", "arnoldi"): dattri_if("arnoldi"),
    ("dattri", "lissa"): dattri_if("lissa"),
    ("dattri", "datainf"): dattri_if("datainf"),
    ("dattri", "ekfac"): dattri_if("ekfac"),
    ("dattri", "tracin"): dattri_tracin(False, True),
    ("dattri", "grad_dot"): dattri_tracin(False, False),
    ("dattri", "grad_cos"): dattri_tracin(True, False),
    ("dattri", "trak"): dattri_trak,
    ("kronfluence", "kfac"): kronfluence("kfac"),
    ("kronfluence", "ekfac"): kronfluence("ekfac"),
    ("captum", "tracin"): captum_tracin,
    ("captum", "exact"): captum_if("exact"),
    ("captum", "arnoldi"): captum_if("arnoldi"),
}


MODULES = {"dattri": ["dattri.task", "dattri.algorithm.influence_function", "dattri.algorithm.tracin",
                       "dattri.algorithm.trak"],
           "kronfluence": ["kronfluence.analyzer", "kronfluence.arguments", "kronfluence.task"],
           "captum": ["captum.influence", "captum.influence._core.influence_function",
                      "captum.influence._core.arnoldi_influence_function"]}


def main() -> None:
    path, peer, estimator, out = sys.argv[1:5]
    problem = torch.load(path, weights_only=True)
    torch.set_num_threads(int(problem.get("threads", 1)))
    try:
        for name in MODULES[peer]:  # imported before the clock starts
            importlib.import_module(name)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        PEERS[(peer, estimator)](problem)  # the first call pays one-off costs (torch.func tracing, caches)
        start = time.perf_counter()
        scores = PEERS[(peer, estimator)](problem)
        seconds = time.perf_counter() - start
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        result: dict[str, Any] = {"seconds": seconds, "peak_mb": peak,
                                  "scores": scores.to(torch.float64).tolist()}
    except Exception as exc:  # a peer's failure is reported in the table, not raised
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
