"""The study's own code: import a ``module:callable`` (``inflang.code`` finds its file), call a custom loader,
factory or scorer and check what it returns, and probe a study's code once for its sizes (``inflang plan``
and ``run`` do, through ``probe``; workers import the code again from the folder the task names).

A module beside the study is imported with its folder first on the path only while it loads or is called,
and taken out of ``sys.modules`` again, so two studies' modules of the same names do not collide; the loaded
module is cached by its file's digest, so an edited one is loaded afresh even in a long-lived process. A
module found on the Python path is imported as usual.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from inflang.code import CodeNotFound, digest, locate_module, split
from inflang.errors import CodeProblem
from inflang.spec import CustomDataset, CustomEstimator, CustomModel, ModelFacts, Study
from inflang.spec.dataset import DatasetInfo
from runners.errors import TaskFailure


class CodeError(Exception):
    """What is wrong with a callable or what it returned, in one line (no position: the caller adds it)."""


_LOADED: dict[tuple[str, str | None, str], Any] = {}  # (module, folder, digest of its file) -> module


def _load_module(name: str, folder: str | None) -> Any:
    """The module, imported with ``folder`` first on the path only while it loads; every module loaded from the
    folder (the module, its package, the neighbours it imports) is then taken out of ``sys.modules`` again, so
    another study's folder with modules of the same names imports its own, and an edited file is loaded anew
    (its digest keys the cache)."""
    path = locate_module(name, folder)
    key = (name, folder, hashlib.sha256(path.read_bytes()).hexdigest())
    if key in _LOADED:
        return _LOADED[key]
    if folder is None or Path(folder).resolve() not in path.parents:
        module = importlib.import_module(name)  # an installed module: imported as usual
        _LOADED[key] = module
        return module
    root = str(Path(folder).resolve())
    for k in [k for k in sys.modules if k == name or k.startswith(f"{name}.")]:
        del sys.modules[k]
    with on_path(root):
        module = importlib.import_module(name)
    _LOADED[key] = module
    return module


@contextlib.contextmanager
def on_path(root: str | None) -> Iterator[None]:
    """``root`` first on the import path while inside (the study's modules, and what they import, even lazily
    when called), and every module loaded from it taken out of ``sys.modules`` afterwards (another folder's
    modules of the same names are then its own)."""
    if root is None:
        yield
        return
    for k in [k for k, m in sys.modules.items() if _within(m, root)]:
        del sys.modules[k]
    sys.path.insert(0, root)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(root)
        for k in [k for k, m in sys.modules.items() if _within(m, root)]:
            del sys.modules[k]


def _within(module: Any, root: str) -> bool:
    origin = getattr(module, "__file__", None)
    if not origin:
        return False
    return _real(origin).startswith(root + "/")


@functools.cache
def _real(origin: str) -> str:
    """A module file's resolved path, once per process: ``on_path`` checks every loaded module (thousands with
    torch) on entry and exit, and resolving each path every time dominated a small task."""
    return str(Path(origin).resolve())


def resolve(reference: str, folder: str | None) -> Callable[..., Any]:
    """The callable a reference names; CodeError when its module cannot be imported, lacks the attribute, or
    the attribute is not callable."""
    name, attribute = split(reference)
    try:
        module = _load_module(name, folder)
    except CodeNotFound as exc:
        raise CodeError(str(exc)) from None
    except (Exception, SystemExit) as exc:  # the user's module raised (or exited) while it was imported
        raise CodeError(f"importing {name} raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not hasattr(module, attribute):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise CodeError(f"module {name} has no attribute '{attribute}'"
                        + (f" (it defines: {', '.join(defined[:8])})" if defined else ""))
    found = getattr(module, attribute)
    if not callable(found):
        raise CodeError(f"{reference} is a {type(found).__name__}, not a function or class")
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _call(reference: str, folder: str | None, /, *args: Any, **kwargs: Any) -> Any:
    """The referenced callable's result (``resolve``'s CodeError as it is); CodeError when the call raises."""
    function = resolve(reference, folder)
    root = str(Path(folder).resolve()) if folder is not None and Path(folder).is_dir() else None
    try:
        with on_path(root):
            return function(*args, **kwargs)
    except Exception as exc:
        raise CodeError(f"{reference} raised {type(exc).__name__}: {_first_line(exc)}") from None


# --- data --------------------------------------------------------------------------------------------------

def _array(value: Any, what: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception:
        raise CodeError(f"{what} is a {type(value).__name__}, not an array or tensor") from None


def loaded(spec: CustomDataset) -> tuple[np.ndarray, np.ndarray, int]:
    """(x, y, classes) from the loader, checked: x [n, ...] finite floats, y [n] integer labels >= 0 (classes =
    max + 1) or floats (regression: y [n, targets], classes = targets)."""
    out = _call(spec.loader, spec.folder, **spec.args)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise CodeError(f"{spec.loader} must return (x, y), not a {type(out).__name__}")
    x, y = _array(out[0], "x"), _array(out[1], "y")
    if x.ndim < 2 or x.shape[0] == 0:
        raise CodeError(f"{spec.loader} returned x of shape {tuple(x.shape)}; expected [n, features...] with n >= 1")
    if y.shape[:1] != x.shape[:1]:
        raise CodeError(f"{spec.loader} returned {x.shape[0]} rows of x and {y.shape[0] if y.ndim else 0} of y")
    if not np.issubdtype(x.dtype, np.number):
        raise CodeError(f"{spec.loader} returned x of dtype {x.dtype}; expected numbers")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad.any():
        raise CodeError(f"{spec.loader} returned x with NaN or infinite values in {int(bad.sum())} rows "
                        f"(first: row {int(np.flatnonzero(bad)[0])})")
    if y.dtype.kind == "f":  # float targets: regression (integer labels are classes)
        y = y.astype(np.float64).reshape(len(y), -1)
        if not np.isfinite(y).all():
            raise CodeError(f"{spec.loader} returned y with NaN or infinite targets")
        return x, y, int(y.shape[1])
    if y.ndim != 1 or y.dtype.kind not in "iub":
        raise CodeError(f"{spec.loader} returned y of shape {tuple(y.shape)} and dtype {y.dtype}; expected [n] "
                        "integer class labels (or float targets for regression)")
    labels = y.astype(np.int64)
    if labels.min() < 0:
        raise CodeError(f"{spec.loader} returned a negative class label ({int(labels.min())})")
    classes = int(labels.max()) + 1
    if classes < 2:
        raise CodeError(f"{spec.loader} returned labels of one class only")
    return x, labels, classes


def dataset_facts(spec: CustomDataset) -> DatasetInfo:
    x, y, classes = loaded(spec)
    return DatasetInfo(rows=int(x.shape[0]), features=int(np.prod(x.shape[1:])), classes=classes,
                       shape=tuple(int(s) for s in x.shape[1:]) if x.ndim > 2 else None,
                       regression=bool(y.dtype.kind == "f"),
                       whole_targets=bool(y.dtype.kind == "f" and np.all(y == np.round(y))))


# --- models ------------------------------------------------------------------------------------------------

def build_custom(spec: CustomModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    """``runners.models`` builder: factory(input_shape, classes, **args), which must return an nn.Module."""
    try:
        return _module(spec, shape, classes)
    except CodeError as exc:
        raise TaskFailure(f"model.factory: {exc}") from None


def _module(spec: CustomModel, shape: tuple[int, ...], classes: int) -> nn.Module:
    module = _call(spec.factory, spec.folder, tuple(shape), classes, **spec.args)
    if not isinstance(module, nn.Module):
        raise CodeError(f"{spec.factory} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def model_facts(spec: CustomModel, info: DatasetInfo) -> ModelFacts:
    """Sizes of the factory's module for the dataset (one forward pass of two examples, float64), checking
    that it maps [b, *input_shape] to [b, classes]."""
    from runners import stacked
    from runners.engine import fixed_structure
    from runners.ensemble import activations_per_example, multiply_adds

    shape = info.shape or (info.features,)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = _module(spec, shape, info.classes).double().eval()
        try:
            with torch.no_grad():
                out = module(torch.zeros(2, *shape, dtype=torch.float64))
        except Exception as exc:
            raise CodeError(f"the module from {spec.factory} failed on inputs of shape {(2, *shape)}: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, info.classes):
        found = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise CodeError(f"the module from {spec.factory} maps inputs {(2, *shape)} to {found}; expected "
                        f"(2, {info.classes}) (one output per class, or per regression target)")
    convolutional = any(isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) for m in module.modules())
    plain_stack = stacked.supports(module)  # retrained by the convolution engine, without vmap
    over_models, over_examples = batching(module, shape)
    return ModelFacts(n_params=sum(p.numel() for p in module.parameters()),
                      activations=activations_per_example(module, shape),
                      multiply_adds=multiply_adds(module, shape), convolutional=convolutional,
                      stacked=plain_stack, fixed=fixed_structure(module), name=type(module).__name__,
                      unbatched=None if plain_stack else over_models, unbatched_examples=over_examples)


def batching(module: nn.Module, shape: tuple[int, ...]) -> tuple[str | None, str | None]:
    """Why vmap cannot batch ``module`` (float64, two inputs of zeros) over two models, and why not its
    per-example gradients over the examples (None where it can): what the run will do one at a time."""
    from torch.func import functional_call, grad, vmap

    from runners.engine import first_line
    from runners.objective import vmap_failure

    x = torch.zeros(2, *shape, dtype=torch.float64)
    params = {k: v.detach() for k, v in module.named_parameters()}
    two = {k: torch.stack([v, v]) for k, v in params.items()}

    def one(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(module, p, (xi.unsqueeze(0),)).sum()

    def refusal(attempt: Callable[[], Any]) -> str | None:
        try:
            with torch.random.fork_rng(devices=[]):
                attempt()
        except Exception as exc:  # any other error: the run meets it where it can say more
            return first_line(exc) if vmap_failure(exc) else None
        return None

    models = refusal(lambda: vmap(lambda p, xb: functional_call(module, p, (xb,)), in_dims=(0, None),
                                  randomness="same")(two, x))
    examples = refusal(lambda: vmap(grad(one), in_dims=(None, 0))(params, x))
    return models, examples


# --- estimators --------------------------------------------------------------------------------------------

def custom_scores(spec: CustomEstimator, inputs: Any) -> Tensor:
    """``runners.estimators`` entry: scorer(inputs, **args) -> [T, n_train], checked."""
    try:
        scores = _call(spec.scorer, spec.folder, inputs, **spec.args)
        try:
            scores = torch.as_tensor(scores)
        except Exception:
            raise CodeError(f"{spec.scorer} returned a {type(scores).__name__}, not scores [T, n_train]") from None
        expected = (int(inputs.x_test.shape[0]), inputs.n)
        if tuple(scores.shape) != expected:
            raise CodeError(f"{spec.scorer} returned scores of shape {tuple(scores.shape)}; expected (test points, "
                            f"training points) = {expected}")
    except CodeError as exc:
        raise TaskFailure(f"custom estimator: {exc}") from None
    return scores.to(torch.float64)


# --- probing a study (the composition root calls this before compiling) ---------------------------------------

@functools.lru_cache(maxsize=64)
def _dataset_facts(spec_json: str, code_digest: str) -> DatasetInfo:  # the digest: edited code is probed again
    return dataset_facts(CustomDataset.model_validate_json(spec_json))


def probe(study: Study) -> Study:
    """The study with its own code's sizes filled in (the loader run once, the factory's module built once, the
    scorers imported); CodeProblem at the field whose code fails."""
    dataset, model = study.dataset, study.model
    if isinstance(dataset, CustomDataset):
        try:
            dataset = dataset.with_facts(_dataset_facts(dataset.model_dump_json(),
                                                        digest(dataset.loader, dataset.folder, dataset.code)))
        except CodeError as exc:
            raise CodeProblem(("dataset", "loader"), str(exc)) from None
    if isinstance(model, CustomModel):
        try:
            model = model.with_facts(_model_facts(model.model_dump_json(), dataset.info(),
                                                  digest(model.factory, model.folder, model.code)))
        except CodeError as exc:
            raise CodeProblem(("model", "factory"), str(exc)) from None
    for i, est in enumerate(study.estimators):
        if isinstance(est, CustomEstimator):
            try:
                resolve(est.scorer, est.folder)
            except CodeError as exc:
                raise CodeProblem(("estimators", i, "scorer"), str(exc)) from None
    return study.model_copy(update={"dataset": dataset, "model": model})


@functools.lru_cache(maxsize=64)
def _model_facts(spec_json: str, info: DatasetInfo, code_digest: str) -> ModelFacts:  # DatasetInfo: frozen
    return model_facts(CustomModel.model_validate_json(spec_json), info)
