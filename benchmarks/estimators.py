"""Every estimator on one trained model and checkpoint: inflang side by side with the peer libraries.

    python benchmarks/estimators.py --peers-python /path/to/peers-venv/bin/python [--problem iris|digits]

The peers (dattri, captum, kronfluence) live in a separate environment, not among inflang's dependencies:
    python3 -m venv peers && peers/bin/pip install torch==2.13.0 dattri kronfluence captum

One model is trained here (float32, weight decay 0.01, three checkpoints for TracIn) and written to a
problem file; each implementation then runs in a fresh process of its own (one torch thread by default)
and computes the scores twice. The second run is timed (imports, model loading and one-off first-call
costs excluded); the increase of the process's peak resident memory over both runs is reported.
Agreement is against inflang's scores on the same model: Pearson correlation over all (test, train)
pairs, and the largest absolute difference over the largest |score|. Peer scores are converted to
inflang's convention (change of the test loss when the point is removed, divided by n).
"""

from __future__ import annotations

import argparse
import json
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


def model_spec(arch: dict[str, Any]) -> Any:
    from inflang.spec import CnnModel, MlpModel

    if arch["kind"] == "cnn":
        return CnnModel(arch="cnn", depth=arch["depth"], channels=arch["channels"])
    return MlpModel(arch="mlp", depth=1, width=arch["sizes"][1])


def make_problem(name: str, path: Path, threads: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits, load_iris

    from inflang.spec import TrainingSpec
    from runners.models import build
    from runners.train import train

    torch.manual_seed(0)
    if name == "iris":
        x, y = load_iris(return_X_y=True)
        width, epochs, n_test = 16, 2000, 5
    elif name == "digits-cnn":
        x, y = load_digits(return_X_y=True)
        width, epochs, n_test = 0, 100, 5
    else:
        x, y = load_digits(return_X_y=True)
        width, epochs, n_test = 32, 300, 5
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    order = np.random.default_rng(0).permutation(len(y))
    x_all = torch.tensor(x[order], dtype=torch.float32)
    y_all = torch.tensor(y[order])
    n_train = int(0.8 * len(y))
    xt, yt = x_all[:n_train], y_all[:n_train]
    xs, ys = x_all[n_train:n_train + n_test], y_all[n_train:n_train + n_test]
    classes = int(y_all.max()) + 1
    if name == "digits-cnn":  # 8x8 images, two 3x3 stride-2 convolutions of 8 channels, a linear layer
        xt, xs = xt.reshape(-1, 1, 8, 8), xs.reshape(-1, 1, 8, 8)
        arch: dict[str, Any] = {"kind": "cnn", "shape": [1, 8, 8], "channels": 8, "depth": 2, "classes": classes}
    else:
        arch = {"kind": "mlp", "sizes": [x.shape[1], width, classes]}
    module = build(model_spec(arch), tuple(xt.shape[1:]), classes, seed=0, dtype=torch.float32)
    spec = TrainingSpec(optimizer="adam", lr=0.01, epochs=epochs, weight_decay=0.01, dtype="float32", checkpoints=3)
    trained = train(module, xt, yt, spec, 0)
    problem = {"x_train": xt, "y_train": yt, "x_test": xs, "y_test": ys, "params": trained.params,
               "arch": arch, "activation": "tanh", "weight_decay": 0.01,
               "checkpoints": [{"lr": lr, "params": p} for lr, p in trained.snapshots], "threads": threads}
    torch.save(problem, path)
    return problem


def prepare(problem: dict[str, Any], estimator: str) -> Callable[[], torch.Tensor]:
    """inflang's estimator on the problem, set up (model, spec); calling it computes the scores [T, n]
    (for exact, the curvature task's Hessian and eigendecomposition are part of the cost)."""
    from pydantic import TypeAdapter

    from inflang.spec import EstimatorSpec
    from runners.curvature import objective_hessian, spectrum
    from runners.estimators import ESTIMATORS, EstimatorInputs
    from runners.models import build

    arch = problem["arch"]
    classes = arch["classes"] if arch["kind"] == "cnn" else arch["sizes"][-1]
    module = build(model_spec(arch), tuple(problem["x_train"].shape[1:]), classes, seed=0, dtype=torch.float32)
    settings = {**SETTINGS[estimator], **({"models": 1} if estimator == "trak" else {})}
    spec: Any = TypeAdapter(EstimatorSpec).validate_python({"name": estimator, **settings})
    params, wd = problem["params"], problem["weight_decay"]
    x, y = problem["x_train"], problem["y_train"]

    def run() -> torch.Tensor:
        curvature = spectrum(objective_hessian(module, params, x, y, wd)) if estimator == "exact" else None
        inputs = EstimatorInputs(module, params, x, y, problem["x_test"], problem["y_test"], "test_loss", wd, 0,
                                 spectrum=curvature,
                                 checkpoints=[(c["lr"], c["params"]) for c in problem["checkpoints"]])
        return ESTIMATORS[estimator](spec, inputs)

    return run


def worker(path: str, estimator: str, out: str) -> None:
    problem = torch.load(path, weights_only=True)
    torch.set_num_threads(int(problem["threads"]))
    run = prepare(problem, estimator)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run()  # the first call pays one-off costs (torch.func tracing), as the peers' does
    start = time.perf_counter()
    scores = run()
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_mb": peak, "scores": scores.tolist()}))


def run_one(cmd: list[str], out: Path, timeout: int) -> dict[str, Any]:
    try:
        subprocess.run(cmd, check=False, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if not out.exists():
        return {"error": "no result (the process failed)"}
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def agreement(peer: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    pearson = float(np.corrcoef(peer.ravel(), reference.ravel())[0, 1])
    return pearson, float(np.abs(peer - reference).max() / np.abs(reference).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-python", help="python of an environment with dattri, kronfluence and captum")
    parser.add_argument("--problem", choices=["iris", "digits", "digits-cnn"], default="iris")
    parser.add_argument("--only", help="comma-separated estimators (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--worker", nargs=3, metavar=("PROBLEM", "ESTIMATOR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    names = args.only.split(",") if args.only else list(SETTINGS)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problem.pt"
        problem = make_problem(args.problem, path, args.threads)
        n_params = sum(v.numel() for v in problem["params"].values())
        print(f"problem: {args.problem} {problem['arch']}, {n_params} parameters, "
              f"{len(problem['y_train'])} training points, {len(problem['y_test'])} test points, float32, "
              f"{args.threads} thread(s)", file=sys.stderr)
        for name in names:
            out = Path(tmp) / f"ours-{name}.json"
            mine = run_one([sys.executable, str(Path(__file__).resolve()), "--worker", str(path), name, str(out)],
                           out, args.timeout)
            rows.append({"estimator": name, "implementation": "inflang", **_summary(mine, None)})
            reference = np.array(mine["scores"]) if "scores" in mine else None
            for peer in PEERS.get(name, []):
                if not args.peers_python:
                    continue
                out = Path(tmp) / f"{peer}-{name}.json"
                problem["settings"] = SETTINGS[name]
                peer_path = Path(tmp) / f"problem-{name}.pt"
                torch.save(problem, peer_path)
                result = run_one([args.peers_python, str(HERE / "peers.py"), str(peer_path), peer, name, str(out)],
                                 out, args.timeout)
                row = {"estimator": name, "implementation": peer, **_summary(result, reference)}
                if "seconds" in mine and "seconds" in row:
                    row["peer_over_inflang"] = row["seconds"] / mine["seconds"]
                rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'estimator':10} {'implementation':14} {'seconds':>9} {'peak MB':>8} {'pearson':>8} {'max rel err':>11} "
          f"{'peer/inflang time':>17}")
    for r in rows:
        if "error" in r:
            print(f"{r['estimator']:10} {r['implementation']:14} {r['error']}")
            continue
        pearson = f"{r['pearson']:8.5f}" if "pearson" in r else f"{'-':>8}"
        rel = f"{r['max_rel_err']:11.2e}" if "max_rel_err" in r else f"{'-':>11}"
        ratio = f"{r['peer_over_inflang']:17.2f}" if "peer_over_inflang" in r else f"{'':>17}"
        print(f"{r['estimator']:10} {r['implementation']:14} {r['seconds']:9.3f} {r['peak_mb']:8.1f} {pearson} {rel} "
              f"{ratio}")


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
