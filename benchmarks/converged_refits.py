"""Converged refits at MNIST-1D size: what a converged PBRF (``ground_truth: {protocol: pbrf, solver: newton}``)
costs and how far its chord iteration gets on Greydanus's 1D CNN (7,460 parameters, 4,000 training signals,
float64), for ReLU (the published network) and GELU (a smooth one).

    python benchmarks/converged_refits.py [--activations relu,gelu] [--removals 40] [--iterations 8]
                                          [--damping 0.001] [--single 2] [--warm-steps 200]
                                          [--warm-members 4] [--json FILE]

Per activation, measured in this one run: training as ``studies/paper/mnist1d_cnn.yaml`` trains (Adam, lr 0.01,
75 epochs, batch 100, weight decay 0.001); one full-batch gradient; one Hessian-vector product alone and 16
batched; the Gauss-Newton matrix (the chord) and its Cholesky factor. Then, for two sets of ``--removals``
training points (around the 30th percentile of the training loss, and the highest losses), the PBRF's chord
iteration theta <- theta - (G + (wd + damping) I)^-1 grad (a step is kept only where it lowers the objective,
as ``runners.newton`` keeps it; no Newton steps): batched over the set, and one member at a time for the first
``--single`` members, in seconds per member-iteration, with how many members reached |grad| <= 1e-8 and 1e-10.
Side by side with it, the solver the study runs (``runners.newton.newton_solve``: above 3,000 parameters,
limited-memory BFGS from the same chord) for the same number of iterations on the same set, and the warm-start
optimiser (what ``solver: gradient`` runs: Adam from theta_s, here full-batch so that only its steps, not
minibatch noise, limit it) for ``--warm-steps`` steps on the first ``--warm-members`` members of the set, at
the training's lr and at a tenth of it, with the gradient norms it had reached (the smallest and the largest
over the members) at the start, after as many steps as the solver took iterations (where that is fewer than
``--warm-steps``) and at the end, and its seconds per gradient evaluation and member.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inflang.spec import CnnModel, Mnist1dDataset, TrainingSpec  # noqa: E402
from runners.curvature import objective_ggn  # noqa: E402
from runners.data import load_raw, prepare  # noqa: E402
from runners.models import build  # noqa: E402
from runners.newton import ProximalBregman, newton_solve  # noqa: E402
from runners.objective import FlatModel, per_example_loss  # noqa: E402
from runners.train import train  # noqa: E402

WEIGHT_DECAY = 0.001


def hessian_products(objective: ProximalBregman, theta: torch.Tensor, rows: torch.Tensor,
                     v: torch.Tensor) -> torch.Tensor:
    """[M, P] H_m v_m of the models ``rows`` at theta [M, P] (each model's objective depends on its own row
    alone): reverse over reverse, d/dtheta sum_m <grad L_m, v_m>."""
    theta = theta.detach().requires_grad_(True)
    (grads,) = torch.autograd.grad(objective.values(theta, rows).sum(), theta, create_graph=True)
    (products,) = torch.autograd.grad(grads, theta, grad_outputs=v)
    return products


def timed(fn: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def chord(objective: ProximalBregman, theta: torch.Tensor, factor: torch.Tensor, iterations: int) -> dict[str, Any]:
    """The chord iteration on every member of ``objective`` at once: seconds per member-iteration and how many
    converged."""
    members = theta.shape[0]
    rows = torch.arange(members)
    began = time.perf_counter()
    values, grads = objective.values_and_grads(theta, rows)
    for _ in range(iterations):
        trial = theta - torch.cholesky_solve(grads.T, factor).T
        new_values, new_grads = objective.values_and_grads(trial, rows)
        lower = new_values <= values + 1e-12 * values.abs()
        theta[lower], values[lower], grads[lower] = trial[lower], new_values[lower], new_grads[lower]
    seconds = time.perf_counter() - began
    norms = grads.norm(dim=1)
    return {"seconds_per_member_iteration": seconds / (members * (iterations + 1)),
            "below_1e-8": int((norms <= 1e-8).sum()), "below_1e-10": int((norms <= 1e-10).sum()),
            "members": members, "worst_grad": float(norms.max())}


def warm_start(objective: ProximalBregman, theta: torch.Tensor, lr: float, steps: int,
               checkpoints: tuple[int, ...]) -> dict[str, Any]:
    """Full-batch Adam on every member at once (its moments are per coordinate, so each member runs alone):
    the gradient norms (smallest and largest over the members) after each checkpoint's steps, and seconds per
    gradient evaluation (steps + 1 of them) and member."""
    members = theta.shape[0]
    rows = torch.arange(members)
    theta = theta.clone().requires_grad_(True)
    adam = torch.optim.Adam([theta], lr=lr)
    reached: dict[str, Any] = {}
    began = time.perf_counter()
    for step in range(steps + 1):
        values, grads = objective.values_and_grads(theta.detach(), rows)
        if step in checkpoints:
            norms = grads.norm(dim=1)
            reached[str(step)] = {"worst": float(norms.max()), "best": float(norms.min()),
                                  "below_1e-8": int((norms <= 1e-8).sum())}
        if step == steps:
            break
        adam.zero_grad()
        theta.grad = grads
        adam.step()
    return {"lr": lr, "seconds_per_member_gradient": (time.perf_counter() - began) / (members * (steps + 1)),
            "members": members, "reached": reached}


def measure(activation: str, removals: int, iterations: int, damping: float, single: int, warm_steps: int,
            warm_members: int) -> dict[str, Any]:
    dtype = torch.float64
    spec = Mnist1dDataset(name="mnist1d", test_size=500)
    data = prepare(spec, load_raw(spec), 0, dtype)
    x, y = data.x_train, data.y_train
    model = CnnModel(arch="cnn", depth=3, channels=25, kernel=5, padding=1, activation=activation)
    module = build(model, data.input_shape, data.classes, 0, dtype)
    training = TrainingSpec(optimizer="adam", lr=0.01, epochs=75, batch_size=100, weight_decay=WEIGHT_DECAY,
                            dtype="float64")
    trained, train_seconds = timed(lambda: train(module, x, y, training, 0))
    flat = FlatModel(module, trained.params)
    theta = flat.theta
    P = theta.numel()
    with torch.no_grad():
        losses = per_example_loss(flat.logits(theta, x), y)
    order = torch.argsort(losses, descending=True)
    third = len(order) - len(order) * 30 // 100  # the 30th percentile from the bottom
    sets = {"30th percentile": order[third - removals // 2: third - removals // 2 + removals],
            "highest loss": order[:removals]}
    probe = ProximalBregman(flat, x, y, order[:16], torch.ones(16, dtype=dtype),
                            WEIGHT_DECAY + damping)
    start = theta.expand(16, P).clone()
    _, gradient = timed(lambda: probe.values_and_grads(start[:1], torch.arange(1)))
    _, one_product = timed(lambda: hessian_products(probe, start[:1], torch.arange(1), torch.randn(1, P, dtype=dtype)))
    _, sixteen = timed(lambda: hessian_products(probe, start, torch.arange(16), torch.randn(16, P, dtype=dtype)))
    ggn, ggn_seconds = timed(lambda: objective_ggn(module, trained.params, x, y, WEIGHT_DECAY))
    ggn.diagonal().add_(damping)
    factor, cholesky_seconds = timed(lambda: torch.linalg.cholesky(ggn))
    out: dict[str, Any] = {"activation": activation, "parameters": P, "train_s": round(train_seconds, 1),
                           "gradient_s": round(gradient, 3), "hvp_s": round(one_product, 3),
                           "hvp_batched_s": round(sixteen / 16, 3), "ggn_s": round(ggn_seconds, 1),
                           "cholesky_s": round(cholesky_seconds, 2), "sets": {}}
    for name, chosen in sets.items():
        objective = ProximalBregman(flat, x, y, chosen, torch.ones(len(chosen), dtype=dtype), WEIGHT_DECAY + damping)
        batched = chord(objective, theta.expand(len(chosen), P).clone(), factor, iterations)
        alone = [chord(ProximalBregman(flat, x, y, chosen[m:m + 1], torch.ones(1, dtype=dtype),
                                       WEIGHT_DECAY + damping), theta.expand(1, P).clone(), factor, iterations)
                 for m in range(single)]
        batched["alone_seconds_per_member_iteration"] = sum(a["seconds_per_member_iteration"] for a in alone) / single
        began = time.perf_counter()
        solved = newton_solve(objective, theta.expand(len(chosen), P).clone(), len(chosen), ggn, 1e-10, iterations,
                              0.0, strict=False)
        norms = solved.grad_norm
        batched["solver"] = {"seconds": time.perf_counter() - began, "below_1e-8": int((norms <= 1e-8).sum()),
                             "below_1e-10": int((norms <= 1e-10).sum()), "worst_grad": float(norms.max()),
                             "iterations": int(solved.iterations.max())}
        if warm_steps:
            few = ProximalBregman(flat, x, y, chosen[:warm_members], torch.ones(warm_members, dtype=dtype),
                                  WEIGHT_DECAY + damping)
            checkpoints = (0, int(solved.iterations.max()), warm_steps)
            batched["warm_start"] = [warm_start(few, theta.expand(warm_members, P), lr, warm_steps, checkpoints)
                                     for lr in (training.lr, training.lr / 10)]
        out["sets"][name] = batched
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", default="relu,gelu")
    parser.add_argument("--removals", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--damping", type=float, default=0.001)
    parser.add_argument("--single", type=int, default=2, help="members also timed one at a time")
    parser.add_argument("--warm-steps", type=int, default=200, help="Adam steps of the warm-start comparison (0: none)")
    parser.add_argument("--warm-members", type=int, default=4, help="members the warm-start optimiser refits")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = []
    for activation in args.activations.split(","):
        found = measure(activation, args.removals, args.iterations, args.damping, args.single, args.warm_steps,
                        args.warm_members)
        results.append(found)
        print(f"{activation}: {found['parameters']} parameters; training {found['train_s']} s; gradient "
              f"{found['gradient_s']} s; HVP {found['hvp_s']} s alone, {found['hvp_batched_s']} s each of 16; "
              f"Gauss-Newton matrix {found['ggn_s']} s, Cholesky {found['cholesky_s']} s", flush=True)
        for name, row in found["sets"].items():
            print(f"  {name}: chord, {args.iterations} iterations, damping {args.damping:g}: "
                  f"{row['below_1e-8']} / {row['members']} at |grad| <= 1e-8, {row['below_1e-10']} at 1e-10 "
                  f"(worst {row['worst_grad']:.1e}); {row['seconds_per_member_iteration']:.3f} s per member-"
                  f"iteration batched, {row['alone_seconds_per_member_iteration']:.3f} s one at a time", flush=True)
            solver = row["solver"]
            print(f"  {name}: the solver (quasi-Newton from the chord), {args.iterations} iterations: "
                  f"{solver['below_1e-8']} / {row['members']} at 1e-8, {solver['below_1e-10']} at 1e-10 (worst "
                  f"{solver['worst_grad']:.1e}); {solver['seconds']:.1f} s", flush=True)
            for warm in row.get("warm_start", []):
                marks = "; ".join(f"after {k} steps {v['best']:.1e} to {v['worst']:.1e}, "
                                  f"{v['below_1e-8']} at 1e-8" for k, v in warm["reached"].items())
                print(f"  {name}: warm start (full-batch Adam, lr {warm['lr']:g}), {warm['members']} members: {marks}; "
                      f"{warm['seconds_per_member_gradient']:.3f} s per member-gradient", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
