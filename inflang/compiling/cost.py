"""Memory and chunking arithmetic for batched retraining, shared by the plan (no torch) and the engine.

One ensemble member holds its parameters, their gradient and two optimizer states (4 P numbers), plus
the outputs of every layer for each example of a batch, kept for the backward pass (times three for
temporaries). Models retrained at once = budget // bytes per member, at least 1, at most ``cap``.
"""

from __future__ import annotations

ITEMSIZE = {"float32": 4, "float64": 8}

ENGINES = ("auto", "compiled", "eager")  # the retraining engines (runners.engine)
AUTO_MIN_MODEL_STEPS = 100_000  # auto compiles an ensemble of at least this many models x steps
STACKED_DEVICES = ("cpu",)  # where the convolution engine runs (the devices of runners.stacked.STRATEGY)


ENGINE_INPUT = "_engine"  # a task's inputs as submitted: the engine the run chose for it (inflang.compiling.pricing)


def compile_candidate(convolutional: bool, dtype: str, stacked: bool = False, device: str = "cpu") -> bool:
    """Whether compiling can make this model's steps faster at all, by measurement (``benchmarks/retrain.py``
    on the 2-core machine). A plain layer stack (``stacked``: mlp and logreg without dropout, cnn, lenet, vgg
    without normalisation, a study's own nn.Sequential of such layers) retrains eagerly on the stack engine
    (runners.stacked) on the devices it covers (``STACKED_DEVICES``): on the Iris MLP its eager step is about
    as fast as the compiled one, too close to pay back a compile at these sizes; on the digits CNN as fast in
    float32 and faster in float64. Other convolutional models (resnet, and every one on a GPU) keep vmap's
    grouped convolutions either way: compiling the rest of the step gained in float64 and nothing in float32
    (README, "Speed of the ground truth")."""
    if stacked and device.split(":")[0] in STACKED_DEVICES:
        return False
    return not convolutional or dtype == "float64"


def auto_compiles(model_steps: int, convolutional: bool, dtype: str, stacked: bool = False,
                  device: str = "cpu") -> bool:
    """``--engine auto``'s choice where no rates were measured on this machine: compile a candidate
    (``compile_candidate``) trained for at least ``AUTO_MIN_MODEL_STEPS`` models x steps. Where
    ``inflang plan --calibrate`` measured both engines' rates and the compile, ``compile_pays`` decides."""
    return model_steps >= AUTO_MIN_MODEL_STEPS and compile_candidate(convolutional, dtype, stacked, device)


def compile_pays(model_steps: int, eager_seconds: float, compiled_seconds: float, compile_seconds: float) -> bool:
    """Whether compiling shortens a task of ``model_steps`` models x steps: the seconds it saves, model_steps x
    (eager - compiled seconds per model-step), exceed the seconds the compile takes (measured per shape, once
    per process)."""
    return model_steps * (eager_seconds - compiled_seconds) > compile_seconds


def member_bytes(n_params: int, activations_per_example: int, batch: int, itemsize: int) -> int:
    return itemsize * (4 * n_params + 3 * batch * max(activations_per_example, 1))


DEFAULT_BUDGET = 2 << 30  # bytes: 2 GiB


def default_budget() -> int:
    """The memory budget of one retraining chunk when ``--memory-budget`` is not given: a fixed 2 GiB.

    Fixed rather than read from the free memory, so that a study is chunked (and, with BatchNorm, whose batch
    statistics are reduced in an order that depends on the ensemble's size, computed) the same on a busy and
    an idle machine. Under the eager engine, float64 models without BatchNorm give the same bits at any
    chunking (tested); in float32, torch's vectorised elementwise kernels round the last few elements of a
    tensor in scalar code, so a model's last bits can depend on the ensemble's size; the compiled engine's
    graphs are specialised to the ensemble's size, so there another chunking (or budget) changes the last bits."""
    return DEFAULT_BUDGET


def models_per_chunk(member: int, budget: int | None, cap: int = 1024) -> int:
    budget = default_budget() if budget is None else budget
    return int(max(1, min(cap, budget // member)))


def chunk_bounds(items: int, size: int, probes: int = 0) -> list[tuple[int, int, int]]:
    """The ensembles of one retraining repeat: (lo, hi, probes) per ensemble, items [lo, hi) retrained beside
    one control and ``probes`` resolution probes. ``size`` models fit in one ensemble; the probes ride in the
    first ensemble, or, when they leave no room there, in ensembles of their own of at most ``size`` models
    (each with its control; a runner numbers the probes across them in order)."""
    per_chunk = max(1, size - 1)
    if probes and per_chunk <= probes:
        alone = [(0, 0, min(per_chunk, probes - k)) for k in range(0, probes, per_chunk)]
        return alone + [(lo, min(items, lo + per_chunk), 0) for lo in range(0, max(items, 1), per_chunk)]
    first = per_chunk - probes
    return [(0, min(items, first), probes)] + [(lo, min(items, lo + per_chunk), 0)
                                               for lo in range(first, items, per_chunk)]
