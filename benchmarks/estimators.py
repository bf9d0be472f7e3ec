"""Every estimator on one trained model and checkpoint: inflang side by side with the peer libraries.

    python benchmarks/estimators.py --peers-python /path/to/peers-venv/bin/python [--problem NAME]
        [--only a,b] [--threads N] [--device cpu|cuda]

The peers (dattri, captum, kronfluence) live in a separate environment, not among inflang's dependencies:
    python3 -m venv peers && peers/bin/pip install torch==2.13.0 dattri kronfluence captum
(measured with torch 2.13.0+cpu, dattri 0.3.0, kronfluence 1.0.1, captum 0.9.0).

Problems: iris (an MLP of 131 parameters), digits (MLP, 2,410), digits-cnn (994), and images-resnet:
ResNet-20 without normalisation (270,906 parameters) on 2,000 generated 32x32 images, 10 test points
(``image_problem``). There the estimators on Hessian-vector products run cut-down settings
(PROBLEM_SETTINGS: Arnoldi on an 8-dimensional Krylov space keeping 5 eigenpairs; LiSSA 40 steps on
minibatches of 50 with scale 5,000, above the Hessian's largest eigenvalue, 2,217), exact and cg are left out
of the default list (LEFT_OUT, the reasons printed; --only still runs them), dattri's LiSSA is not run
(PEERS_LEFT_OUT), and the peers take the training set in batches of 500 where their method allows
(PEER_BATCH).

One model is trained here (on the CPU, one thread, float32, weight decay 0.01, three checkpoints for TracIn)
and written to a problem file; each implementation then runs in a fresh process of its own (--threads torch
threads, one by default; on --device) and computes the scores twice. The second run is timed (imports,
model loading and one-off first-call costs excluded); memory is the increase of the process's peak resident
memory over both runs (on CUDA: the peak of the GPU memory torch allocates, over what was allocated before
them). On the CPU a process may take at most --memory-limit of address space (3/4 of the machine's memory
by default), so that one running out fails in its own row. Agreement is against inflang's scores on the
same model: Pearson correlation over all (test, train) pairs, and the largest absolute difference over the
largest |score|. Peer scores are converted to inflang's convention (change of the test loss when the point
is removed, divided by n). Each peer's row also gives inflang's peak memory over the peer's and the
targets inflang misses there: peer/inflang time >= 1, inflang's memory <= 1.5x the peer's, and for EK-FAC
against kronfluence (fisher: empirical) Pearson >= 0.99.

images-resnet with every estimator takes over an hour on the 2-core machine; the README's table comes from
three runs (each also run with --threads 2), measured at one thread: the first in 18.2 min (before EK-FAC's
rotation change; ekfac and kfac alone now 11.6 min), the second in 17.7 min, the third in 35 min with a
1,500 s timeout per process, of which captum's Arnoldi used all (hence the default 600 s):
    python benchmarks/estimators.py --peers-python P --problem images-resnet --only ekfac,kfac,grad_dot,grad_cos
    python benchmarks/estimators.py --peers-python P --problem images-resnet --only tracin,trak,datainf,lissa
    python benchmarks/estimators.py --peers-python P --problem images-resnet --only arnoldi
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

# inflang's settings per estimator (the peers receive the same values, translated to their conventions)
SETTINGS: dict[str, dict[str, Any]] = {
    "exact": {"damping": 0.01},
    "cg": {"damping": 0.01, "max_iter": 60, "tol": 1e-5},
    "arnoldi": {"damping": 0.01, "arnoldi_dim": 100, "top_k": 50},
    "lissa": {"damping": 0.01, "scale": 10.0, "recursion_depth": 500, "batch_size": None},
    "datainf": {"damping": 0.01},
    "kfac": {"damping": 0.01, "fisher": "empirical"},
    "ekfac": {"damping": 0.01, "fisher": "empirical"},
    "tracin": {},
    "grad_dot": {},
    "grad_cos": {},
    "trak": {"proj_dim": 256, "damping": 0.0},
}
PEERS: dict[str, list[str]] = {
    "exact": ["dattri", "captum"], "cg": ["dattri"], "arnoldi": ["dattri", "captum"], "lissa": ["dattri"],
    "datainf": ["dattri"], "kfac": ["kronfluence"], "ekfac": ["kronfluence", "dattri"],
    "tracin": ["dattri", "captum"], "grad_dot": ["dattri"], "grad_cos": ["dattri"], "trak": ["dattri"],
}
PROBLEMS = ("iris", "digits", "digits-cnn", "images-resnet")
# images-resnet: the estimators built on Hessian-vector products, cut down to minutes (see the docstring)
PROBLEM_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "images-resnet": {
        "arnoldi": {"arnoldi_dim": 8, "top_k": 5},
        "lissa": {"scale": 5000.0, "recursion_depth": 40, "batch_size": 50},
    },
}
LEFT_OUT: dict[str, dict[str, str]] = {  # not in the problem's default list (--only still runs them)
    "images-resnet": {
        "exact": "it forms the Hessian: 270,906^2 float64 entries, 587 GB",
        "cg": "each iteration is a full-batch Hessian-vector product on 10 vectors (107 s at one thread), and with "
              "eigenvalues from -9 to 2,217 CG is indefinite at damping 0.01 and needs hundreds of iterations "
              "where damped enough to be definite",
    },
}
PEERS_LEFT_OUT: dict[str, dict[tuple[str, str], str]] = {  # (estimator, peer) not run on the problem
    "images-resnet": {
        ("lissa", "dattri"): "its recursion (vmapped over test points) keeps every step's graph: 0.5 GB per step "
                             "on the tiny 17,000-parameter ResNet, out of memory at depth 50",
    },
}
PEER_NOTES = {  # printed under the table where the row is in it
    ("ekfac", "dattri"): "dattri's EK-FAC covers Linear layers only (its default; its hooks take a layer's raw input, "
                         "not a convolution's patches): on digits-cnn and images-resnet only the last layer",
    ("kfac", "kronfluence"): "kronfluence averages a convolution's T output positions in both factors, inflang sums "
                             "them in A as KFC does (Grosse & Martens 2016): its K-FAC eigenvalues are T times smaller "
                             "there, relative to the damping (EK-FAC refits them, and agrees)",
    ("trak", "dattri"): "each side draws its own random projection: on images-resnet (proj_dim 256 of 270,906 "
                        "parameters) the scores agree only as far as two projections do",
}
PEER_BATCH = {"images-resnet": 500}  # training examples per peer batch where batches are allowed (else all)
TIME_TARGET, MEMORY_TARGET, PEARSON_TARGET = 1.0, 1.5, 0.99  # the targets column (see ``targets``)
PEARSON_TARGETS = {("ekfac", "kronfluence")}


def model_spec(arch: dict[str, Any]) -> Any:
    from inflang.spec import CnnModel, MlpModel, ResnetModel

    if arch["kind"] == "resnet":
        return ResnetModel(arch="resnet", depth=arch["depth"], norm=arch["norm"], width_multiplier=arch["width"])
    if arch["kind"] == "cnn":
        return CnnModel(arch="cnn", depth=arch["depth"], channels=arch["channels"])
    return MlpModel(arch="mlp", depth=1, width=arch["sizes"][1])


def arch_classes(arch: dict[str, Any]) -> int:
    return int(arch["classes"]) if "classes" in arch else int(arch["sizes"][-1])


def settings(problem: str, estimator: str) -> dict[str, Any]:
    """inflang's settings for ``estimator`` on ``problem`` (the peers get the same, translated)."""
    return {**SETTINGS[estimator], **PROBLEM_SETTINGS.get(problem, {}).get(estimator, {})}


def image_problem(tiny: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """images-resnet: (arch, tensors x_train, y_train, x_test, y_test, x_held, y_held, training settings).

    Generated 32x32 RGB images (inflang's synthetic ``kind: images``, 10 classes, pixel noise 0.5): 2,000 to
    train on and 500 held out (accuracy; the first 10 are the test points). ResNet-20 (CIFAR layout, full
    width, 270,906 parameters) without normalisation: every parameter then belongs to a Conv2d or Linear
    layer, so inflang's K-FAC/EK-FAC and kronfluence cover all of them (both leave norm scales out of the
    Kronecker product, the Hessian-based peers would not), and inflang's Hessian-vector products stay batched
    (GroupNorm's double backward has no batching rule: one vector at a time). ``tiny`` (checking the benchmark
    itself): 16x16 images, a quarter of the width (17,000 parameters), 300 to train on for 5 epochs."""
    from inflang.spec import ResnetModel, SyntheticDataset
    from runners.data import load_raw, prepare

    side, width, samples, held = (16, 0.25, 400, 100) if tiny else (32, 1.0, 2500, 500)
    dataset = SyntheticDataset(name="synthetic", kind="images", samples=samples, classes=10, noise=0.5,
                               image_shape=(3, side, side), test_size=held)
    data = prepare(dataset, load_raw(dataset), 0, torch.float32)
    _, blocks, widths = ResnetModel(arch="resnet", depth=20, norm="none", width_multiplier=width).stages()
    arch = {"kind": "resnet", "depth": 20, "norm": "none", "width": width, "blocks": blocks, "widths": widths,
            "shape": [3, side, side], "classes": data.classes}
    tensors = {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test[:10],
               "y_test": data.y_test[:10], "x_held": data.x_test, "y_held": data.y_test}
    training = {"lr": 0.003, "epochs": 5, "batch_size": 32} if tiny else {"lr": 0.001, "epochs": 10, "batch_size": 64}
    return arch, tensors, training


def table_problem(name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """iris, digits (MLPs of width 16 and 32) and digits-cnn: 80% to train on, 5 of the rest as test points."""
    from sklearn.datasets import load_digits, load_iris

    if name == "iris":
        x, y = load_iris(return_X_y=True)
        width, epochs = 16, 2000
    elif name == "digits-cnn":
        x, y = load_digits(return_X_y=True)
        width, epochs = 0, 100
    else:
        x, y = load_digits(return_X_y=True)
        width, epochs = 32, 300
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    order = np.random.default_rng(0).permutation(len(y))
    x_all = torch.tensor(x[order], dtype=torch.float32)
    y_all = torch.tensor(y[order])
    n_train, n_test = int(0.8 * len(y)), 5
    xt, yt = x_all[:n_train], y_all[:n_train]
    xs, ys = x_all[n_train:n_train + n_test], y_all[n_train:n_train + n_test]
    classes = int(y_all.max()) + 1
    if name == "digits-cnn":  # 8x8 images, two 3x3 stride-2 convolutions of 8 channels, a linear layer
        xt, xs = xt.reshape(-1, 1, 8, 8), xs.reshape(-1, 1, 8, 8)
        arch: dict[str, Any] = {"kind": "cnn", "shape": [1, 8, 8], "channels": 8, "depth": 2, "classes": classes}
    else:
        arch = {"kind": "mlp", "sizes": [x.shape[1], width, classes]}
    held = {"x_held": x_all[n_train:], "y_held": y_all[n_train:]}
    return arch, {"x_train": xt, "y_train": yt, "x_test": xs, "y_test": ys, **held}, {"lr": 0.01, "epochs": epochs}


def make_problem(name: str, threads: int, device: str, tiny: bool = False) -> dict[str, Any]:
    """The trained model (on the CPU, float32, weight decay 0.01, three checkpoints) and its data, as written
    to the problem file; ``accuracy`` holds (train, held-out) accuracy and ``logits_test`` the model's logits at
    the test points (the peers check their copy of the model against them)."""
    from inflang.spec import TrainingSpec
    from runners.models import build
    from runners.train import train

    torch.manual_seed(0)
    torch.set_num_threads(1)  # the same model on every machine (a thread count changes the rounding)
    arch, data, training = image_problem(tiny) if name == "images-resnet" else table_problem(name)
    xt, yt = data["x_train"], data["y_train"]
    module = build(model_spec(arch), tuple(xt.shape[1:]), arch_classes(arch), seed=0, dtype=torch.float32)
    spec = TrainingSpec(optimizer="adam", weight_decay=0.01, dtype="float32", checkpoints=3, **training)
    trained = train(module, xt, yt, spec, 0)
    with torch.no_grad():
        accuracy = [float((module(x).argmax(1) == y).double().mean())
                    for x, y in ((xt, yt), (data["x_held"], data["y_held"]))]
        logits_test = module(data["x_test"])
    return {"name": name, "x_train": xt, "y_train": yt, "x_test": data["x_test"], "y_test": data["y_test"],
            "params": trained.params, "arch": arch, "activation": "relu" if arch["kind"] == "resnet" else "tanh",
            "weight_decay": 0.01, "checkpoints": [{"lr": lr, "params": p} for lr, p in trained.snapshots],
            "threads": threads, "device": device, "accuracy": accuracy, "logits_test": logits_test,
            "peer_batch": PEER_BATCH.get(name) if not tiny else None}


def prepare(problem: dict[str, Any], estimator: str) -> Callable[[], torch.Tensor]:
    """inflang's estimator on the problem, set up (model, spec); calling it computes the scores [T, n]
    (for exact, the curvature task's Hessian and eigendecomposition are part of the cost)."""
    from pydantic import TypeAdapter

    from inflang.spec import EstimatorSpec
    from runners.curvature import objective_hessian, spectrum
    from runners.estimators import ESTIMATORS, EstimatorInputs
    from runners.models import build

    arch = problem["arch"]
    module = build(model_spec(arch), tuple(problem["x_train"].shape[1:]), arch_classes(arch), seed=0,
                   dtype=torch.float32)
    spec: Any = TypeAdapter(EstimatorSpec).validate_python(
        {"name": estimator, **problem["settings"], **({"models": 1} if estimator == "trak" else {})})
    params, wd = problem["params"], problem["weight_decay"]
    x, y = problem["x_train"], problem["y_train"]

    def run() -> torch.Tensor:
        curvature = spectrum(objective_hessian(module, params, x, y, wd)) if estimator == "exact" else None
        inputs = EstimatorInputs(module, params, x, y, problem["x_test"], problem["y_test"], "test_loss", wd, 0,
                                 spectrum=curvature,
                                 checkpoints=[(c["lr"], c["params"]) for c in problem["checkpoints"]])
        return ESTIMATORS[estimator](spec, inputs)

    return run


def moved(value: Any, device: str) -> Any:
    """Every tensor in a (nested) problem on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [moved(v, device) for v in value]
    return value


def memory_mark(device: str) -> int:
    """Bytes before the runs: the process's peak resident memory so far (CPU), or the GPU memory allocated
    now, with the GPU's peak counter reset (CUDA)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_peak_mb(mark: int, device: str) -> float:
    """MiB the runs added to the peak since ``memory_mark``."""
    if device.startswith("cuda"):
        return (torch.cuda.max_memory_allocated(device) - mark) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - mark) / 2**20


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so that the clock reads finished work (CUDA runs asynchronously)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def worker(path: str, estimator: str, out: str) -> None:
    from runners.device import configure

    problem = torch.load(path, weights_only=True)
    torch.set_num_threads(int(problem["threads"]))
    device = problem["device"]
    configure(device)  # on CUDA: no TF32, deterministic kernels, as an inflang run there
    with torch.device(device):
        problem = moved(problem, device)
        run = prepare(problem, estimator)
        mark = memory_mark(device)
        run()  # the first call pays one-off costs (torch.func tracing), as the peers' does
        synchronize(device)
        start = time.perf_counter()
        scores = run()
        synchronize(device)
        seconds = time.perf_counter() - start
        peak = memory_peak_mb(mark, device)
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_mb": peak, "scores": scores.cpu().tolist()}))


def run_one(cmd: list[str], out: Path, timeout: int, memory_limit: int | None = None) -> dict[str, Any]:
    """One implementation in a process of its own; with ``memory_limit`` (bytes of address space) an allocation
    beyond it fails in that process (reported in its row) instead of waking the machine's OOM killer."""

    def limit() -> None:
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    try:
        done = subprocess.run(cmd, check=False, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if not out.exists():
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no message"]
        return {"error": f"no result (the process failed: {last[0][:160]})"}
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def agreement(peer: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    pearson = float(np.corrcoef(peer.ravel(), reference.ravel())[0, 1])
    return pearson, float(np.abs(peer - reference).max() / np.abs(reference).max())


def targets(row: dict[str, Any]) -> list[str]:
    """The targets a peer's row misses: inflang at least as fast (peer/inflang time >= 1), inflang's peak
    memory at most 1.5x the peer's (not judged where the peer's measured growth is not positive), and for
    EK-FAC against kronfluence a Pearson correlation >= 0.99 (a missing or NaN correlation misses it)."""
    missed = []
    if "peer_over_inflang" in row and not row["peer_over_inflang"] >= TIME_TARGET:
        missed.append("time")
    if "inflang_mb" in row and row["peak_mb"] > 0 and not row["inflang_mb"] <= MEMORY_TARGET * row["peak_mb"]:
        missed.append("memory")
    if (row["estimator"], row["implementation"]) in PEARSON_TARGETS and not row.get("pearson", 0.0) >= PEARSON_TARGET:
        missed.append("pearson")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-python", help="python of an environment with dattri, kronfluence and captum")
    parser.add_argument("--problem", choices=PROBLEMS, default="iris")
    parser.add_argument("--only", help="comma-separated estimators (default: all the problem runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where the estimators run (the model "
                        "is trained on the CPU either way)")
    parser.add_argument("--timeout", type=int, help="seconds per process (default 600)")
    parser.add_argument("--memory-limit", type=float, help="GiB of address space per process on the CPU "
                        "(default: 3/4 of this machine's memory; 0: none; none on CUDA, whose mappings are large)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # images-resnet shrunk, for testing
    parser.add_argument("--worker", nargs=3, metavar=("PROBLEM", "ESTIMATOR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if args.device != "cpu":
        from runners.device import DeviceError, resolve

        try:
            args.device = resolve(args.device)  # refused here, not in every row, where there is no such device
        except DeviceError as exc:
            parser.error(str(exc))
    timeout = args.timeout or 600  # captum's Arnoldi on images-resnet did not finish in 1,500 s
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = None if args.device != "cpu" or args.memory_limit == 0 else (
        int(args.memory_limit * 2**30) if args.memory_limit else physical * 3 // 4)
    left_out = LEFT_OUT.get(args.problem, {})
    names = args.only.split(",") if args.only else [name for name in SETTINGS if name not in left_out]
    for name in names:
        if name not in SETTINGS:
            parser.error(f"--only: unknown estimator '{name}' (one of {', '.join(SETTINGS)})")
    for name, why in left_out.items():
        print(f"left out on {args.problem}: {name} ({why})", file=sys.stderr)
    names = [name for name in names if name not in left_out]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        problem = make_problem(args.problem, args.threads, args.device, args.tiny)
        n_params = sum(v.numel() for v in problem["params"].values())
        train_acc, held_acc = problem["accuracy"]
        print(f"problem: {args.problem}{' (tiny)' if args.tiny else ''} {problem['arch']}, {n_params} parameters, "
              f"{len(problem['y_train'])} training points (accuracy {train_acc:.3f}, held out {held_acc:.3f}), "
              f"{len(problem['y_test'])} test points, float32, {args.threads} thread(s), {args.device}; "
              f"trained in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        for name in names:
            problem["settings"] = settings(args.problem, name)
            print(f"{name}: {problem['settings']}", file=sys.stderr)
            path = Path(tmp) / f"problem-{name}.pt"
            torch.save(problem, path)
            out = Path(tmp) / f"ours-{name}.json"
            mine = run_one([sys.executable, str(Path(__file__).resolve()), "--worker", str(path), name, str(out)],
                           out, timeout, limit)
            rows.append({"estimator": name, "implementation": "inflang", **_summary(mine, None)})
            _progress(rows[-1])
            reference = np.array(mine["scores"]) if "scores" in mine else None
            for peer in PEERS.get(name, []) if args.peers_python else []:
                if (name, peer) in PEERS_LEFT_OUT.get(args.problem, {}):
                    rows.append({"estimator": name, "implementation": peer,
                                 "error": "left out: " + PEERS_LEFT_OUT[args.problem][(name, peer)]})
                    _progress(rows[-1])
                    continue
                out = Path(tmp) / f"{peer}-{name}.json"
                result = run_one([args.peers_python, str(HERE / "peers.py"), str(path), peer, name, str(out)],
                                 out, timeout, limit)
                row = {"estimator": name, "implementation": peer, **_summary(result, reference)}
                if "error" in mine and "error" not in row:
                    row["missed"] = ["inflang failed"]
                if "seconds" in mine and "seconds" in row:
                    row["peer_over_inflang"] = row["seconds"] / mine["seconds"]
                    row["inflang_mb"] = mine["peak_mb"]
                    if row["peak_mb"] > 0:
                        row["memory_inflang_over_peer"] = mine["peak_mb"] / row["peak_mb"]
                    row["missed"] = targets(row)
                rows.append(row)
                _progress(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'estimator':10} {'implementation':14} {'seconds':>9} {'peak MB':>8} {'pearson':>8} {'max rel err':>11} "
          f"{'peer/inflang time':>17} {'inflang/peer MB':>15}  targets")
    for r in rows:
        if "error" in r:
            print(f"{r['estimator']:10} {r['implementation']:14} {r['error']}")
            continue
        pearson = f"{r['pearson']:8.5f}" if "pearson" in r else f"{'-':>8}"
        rel = f"{r['max_rel_err']:11.2e}" if "max_rel_err" in r else f"{'-':>11}"
        ratio = f"{r['peer_over_inflang']:17.2f}" if "peer_over_inflang" in r else f"{'':>17}"
        memory = f"{r['memory_inflang_over_peer']:15.2f}" if "memory_inflang_over_peer" in r else f"{'':>15}"
        verdict = "" if "missed" not in r else "missed: " + ", ".join(r["missed"]) if r["missed"] else "met"
        print(f"{r['estimator']:10} {r['implementation']:14} {r['seconds']:9.3f} {r['peak_mb']:8.1f} {pearson} {rel} "
              f"{ratio} {memory}  {verdict}")
    for (estimator, peer), note in PEER_NOTES.items():
        if any(r["estimator"] == estimator and r["implementation"] == peer for r in rows):
            print(f"{estimator} / {peer}: {note}")


def _progress(row: dict[str, Any]) -> None:
    """Each row on stderr as it is measured, so that a run cut short (a GPU lease's end) keeps what it did."""
    print("row: " + json.dumps(row), file=sys.stderr, flush=True)


def _summary(result: dict[str, Any], reference: np.ndarray | None) -> dict[str, Any]:
    if "error" in result:
        return {"error": result["error"]}
    row: dict[str, Any] = {"seconds": result["seconds"], "peak_mb": result["peak_mb"]}
    if reference is not None:
        scores = np.array(result["scores"])
        if scores.shape != reference.shape:
            return {**row, "error": f"scores of shape {scores.shape}, expected {reference.shape}"}
        row["pearson"], row["max_rel_err"] = agreement(scores, reference)
    return row


if __name__ == "__main__":
    main()
