"""One peer library's estimator on a problem file written by ``benchmarks/estimators.py``.

Runs in a separate environment that has the peers installed (dattri, kronfluence, captum; not project
dependencies): ``PEERS_PYTHON benchmarks/peers.py PROBLEM.pt PEER ESTIMATOR OUT.json``. Prints nothing;
writes {"seconds" (the second of two runs), "peak_mb", "scores"} with scores in inflang's convention
([test, train], the predicted change of the test loss when the training point is removed, divided by n),
or {"error": "..."}.

Each peer gets the objective inflang uses: the mean cross-entropy over the training set, with weight decay
(weight_decay/2 ||theta||^2) passed as the extra multiple of the identity each library adds to its
curvature ("regularization" or "damping"), since per-example gradients must not contain it.

The model is rebuilt here from plain torch layers named as inflang names them (its MLP, CNN and ResNet
without normalisation), loaded strictly and checked against inflang's logits at the test points. Everything
runs on the problem's device (``--device`` of estimators.py), on CUDA with inflang's numerics there (no TF32,
deterministic kernels); memory is measured as estimators.py measures it.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class ResidualBlock(nn.Module):
    """inflang's basic residual block (runners/models/resnet.py) without normalisation, its parameter names
    included: body = [conv 3x3 (stride), norm, ReLU, conv 3x3, norm], a 1x1 projection shortcut where the
    shape changes, ReLU after the sum; convolutions without bias, ``nn.Identity`` in the norm slots."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, width, 3, stride, 1, bias=False), nn.Identity(), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.Identity())
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != width:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, width, 1, stride, bias=False), nn.Identity())
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def resnet(arch: dict[str, Any]) -> list[nn.Module]:
    """inflang's CIFAR-style ResNet with ``norm: none`` (stem conv 3x3, stages of basic blocks, the first of
    each later stage with stride 2, global average pooling, a linear layer), as nn.Sequential layers."""
    if arch["norm"] != "none":
        raise ValueError(f"the peers' ResNet has no normalisation layers; got norm {arch['norm']}")
    stem = arch["widths"][0]
    layers: list[nn.Module] = [nn.Conv2d(arch["shape"][0], stem, 3, 1, 1, bias=False), nn.Identity(), nn.ReLU()]
    c = stem
    for stage, (count, width) in enumerate(zip(arch["blocks"], arch["widths"], strict=True)):
        for b in range(count):
            layers.append(ResidualBlock(c, width, 2 if stage > 0 and b == 0 else 1))
            c = width
    return [*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, arch["classes"])]


def build(problem: dict[str, Any]) -> nn.Module:
    """The benchmark's model as plain nn.Sequential layers, named as inflang names them (the state dict loads
    strictly) and checked against inflang's logits at the test points."""
    arch, act = problem["arch"], ACTIVATIONS[problem["activation"]]
    layers: list[nn.Module] = []
    if arch["kind"] == "resnet":
        layers = resnet(arch)
    elif arch["kind"] == "cnn":  # inflang's cnn: 3x3 stride-2 convolutions, then a linear layer
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
    model = nn.Sequential(*layers).to(device=problem["x_train"].device, dtype=problem["x_train"].dtype)
    model.load_state_dict(problem["params"], strict=True)
    model.eval()
    with torch.no_grad():
        logits, expected = model(problem["x_test"]), problem["logits_test"]
    if not torch.allclose(logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())):
        raise ValueError(f"the peers' model differs from inflang's: logits off by "
                         f"{float((logits - expected).abs().max()):.3g} at the test points")
    return model


def device_of(problem: dict[str, Any]) -> str:
    """Where the benchmark runs (the problem's tensors were moved there by ``main``)."""
    return str(problem["x_train"].device)


def loaders(problem: dict[str, Any], full: bool = False) -> tuple[Any, Any]:
    """Training and test loaders: the training set in batches of the problem's ``peer_batch`` (all of it when
    unset, or with ``full``: dattri's explicit, CG, Arnoldi and LiSSA attributors sum their inverse-Hessian
    products over the batches, which equals the full objective's only with one batch; its DataInf and EK-FAC
    accumulate over batches)."""
    from torch.utils.data import DataLoader, TensorDataset

    n = len(problem["y_train"])
    batch = n if full else problem.get("peer_batch") or n
    train = DataLoader(TensorDataset(problem["x_train"], problem["y_train"]), batch_size=batch)
    test = DataLoader(TensorDataset(problem["x_test"], problem["y_test"]), batch_size=len(problem["y_test"]))
    return train, test


def call(problem: dict[str, Any], model: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """model(x) with ``params``, for a batch or for one example without its batch axis (dattri's per-example
    gradients call the loss on single examples): the example goes through as a batch of one."""
    rank = problem["x_train"].dim() - 1

    def logits(params: dict[str, Tensor], x: Tensor) -> Tensor:
        if x.dim() == rank:
            return torch.func.functional_call(model, params, x.unsqueeze(0)).squeeze(0)
        return torch.func.functional_call(model, params, x)

    return logits


def dattri_task(problem: dict[str, Any], model: nn.Module, checkpoints: Any = None) -> Any:
    from dattri.task import AttributionTask

    logits = call(problem, model)

    def loss(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        return nn.functional.cross_entropy(logits(params, x), y.long())

    return AttributionTask(loss_func=loss, model=model, checkpoints=checkpoints or model.state_dict())


def dattri_if(kind: str) -> Callable[[dict[str, Any]], Tensor]:
    def run(problem: dict[str, Any]) -> Tensor:
        from dattri.algorithm import influence_function as f

        s, wd, n = problem["settings"], problem["weight_decay"], len(problem["y_train"])
        model = build(problem)
        task = dattri_task(problem, model)
        device = device_of(problem)
        if kind == "exact":
            attributor = f.IFAttributorExplicit(task=task, regularization=wd + s["damping"], device=device)
        elif kind == "cg":
            attributor = f.IFAttributorCG(task=task, regularization=wd + s["damping"], max_iter=s["max_iter"],
                                          tol=s["tol"], device=device)
        elif kind == "arnoldi":
            attributor = f.IFAttributorArnoldi(task=task, regularization=wd + s["damping"], proj_dim=s["top_k"],
                                               max_iter=s["arnoldi_dim"], device=device)
        elif kind == "lissa":  # dattri: h = v + (1 - d) h - H h / s, so d = (damping + weight_decay) / scale
            attributor = f.IFAttributorLiSSA(task=task, damping=(wd + s["damping"]) / s["scale"], scaling=s["scale"],
                                             recursion_depth=s["recursion_depth"], batch_size=s["batch_size"] or n,
                                             device=device)
        elif kind == "datainf":
            attributor = f.IFAttributorDataInf(task=task, regularization=wd + s["damping"], device=device)
        elif kind == "ekfac":
            attributor = f.IFAttributorEKFAC(task=task, damping=wd + s["damping"], device=device)
        else:
            raise ValueError(kind)
        train, test = loaders(problem, full=kind in ("exact", "cg", "arnoldi", "lissa"))
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
                                      normalized_grad=normalized, device=device_of(problem))
        attributor.projector_kwargs = None  # exact gradient products (dattri projects to 512 dimensions by default)
        train, test = loaders(problem)
        scores = attributor.attribute(train, test).detach().T
        return scores if normalized else scores / n

    return run


def dattri_trak(problem: dict[str, Any]) -> Tensor:
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask

    model = build(problem)
    logits = call(problem, model)

    def f(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        p = torch.softmax(logits(params, x), -1).gather(-1, y.long().unsqueeze(-1)).squeeze(-1)
        return -(torch.log(p) - torch.log1p(-p)).sum()

    def correct(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        return torch.softmax(logits(params, x), -1).gather(-1, y.long().unsqueeze(-1)).squeeze(-1)

    task = AttributionTask(loss_func=f, model=model, checkpoints=model.state_dict())
    s = problem["settings"]
    device = device_of(problem)
    attributor = TRAKAttributor(task=task, correct_probability_func=correct, device=device,
                                regularization=s["damping"] or 1e-6,  # its kernel is solved, not pseudo-inverted
                                projector_kwargs={"proj_dim": s["proj_dim"], "device": device})
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
            analyzer = Analyzer("bench", model, task, cpu=device_of(problem) == "cpu", disable_tqdm=True,
                                log_level=40, output_dir=out)
            # CPU datasets: kronfluence moves each batch to its device itself (and pins memory for CUDA)
            train = TensorDataset(problem["x_train"].cpu(), problem["y_train"].cpu())
            test = TensorDataset(problem["x_test"].cpu(), problem["y_test"].cpu())
            factor_args = FactorArguments(strategy=strategy, use_empirical_fisher=s["fisher"] == "empirical",
                                          activation_covariance_dtype=dtype,
                                          gradient_covariance_dtype=dtype, per_sample_gradient_dtype=dtype,
                                          lambda_dtype=dtype)
            batch = problem.get("peer_batch") or n
            analyzer.fit_all_factors("f", train, per_device_batch_size=batch, factor_args=factor_args,
                                     overwrite_output_dir=True)
            score_args = ScoreArguments(damping_factor=wd + s["damping"], per_sample_gradient_dtype=dtype,
                                        precondition_dtype=dtype, score_dtype=dtype)
            analyzer.compute_pairwise_scores("s", "f", test, train, per_device_query_batch_size=len(test),
                                             per_device_train_batch_size=batch, score_args=score_args,
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
                      loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=problem.get("peer_batch") or n,
                      sample_wise_grads_per_batch=True)
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

            common = {"checkpoint": path, "checkpoints_load_func": load, "batch_size": problem.get("peer_batch") or n,
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


def memory_mark(device: str) -> int:
    """As benchmarks/estimators.py: the peak resident memory so far (CPU), or the GPU memory allocated now with
    the peak counter reset (CUDA), in bytes."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_peak_mb(mark: int, device: str) -> float:
    if device.startswith("cuda"):
        return (torch.cuda.max_memory_allocated(device) - mark) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - mark) / 2**20


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def configure(device: str) -> None:
    """On CUDA, the numerics inflang's runs use (runners/device.py): no TF32 in matrix products and
    convolutions, deterministic kernels; the same work on both sides."""
    if not device.startswith("cuda"):
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def moved(value: Any, device: str) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [moved(v, device) for v in value]
    return value


def main() -> None:
    path, peer, estimator, out = sys.argv[1:5]
    problem = torch.load(path, weights_only=True)
    torch.set_num_threads(int(problem.get("threads", 1)))
    device = str(problem.get("device", "cpu"))
    try:
        configure(device)
        problem = moved(problem, device)
        for name in MODULES[peer]:  # imported before the clock starts
            importlib.import_module(name)
        mark = memory_mark(device)
        PEERS[(peer, estimator)](problem)  # the first call pays one-off costs (torch.func tracing, caches)
        synchronize(device)
        start = time.perf_counter()
        scores = PEERS[(peer, estimator)](problem)
        synchronize(device)
        seconds = time.perf_counter() - start
        result: dict[str, Any] = {"seconds": seconds, "peak_mb": memory_peak_mb(mark, device),
                                  "scores": scores.to(torch.float64).cpu().tolist()}
    except Exception as exc:  # a peer's failure is reported in the table, not raised
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
