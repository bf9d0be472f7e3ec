"""A study's own code: a loader, a factory and a scorer beside the study file. Rows equal the built-in
equivalents bit for bit; editing a module reruns exactly what depends on it; every mistake is one positioned
line (exit 2) or a failed cell; workers and Ray import the modules too."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inflang.cli import app
from tests.helpers import rows

runner = CliRunner()

MODULES = {
    "my_data.py": """\
        import numpy as np
        from sklearn.datasets import load_iris

        def iris():
            bunch = load_iris()
            return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
        """,
    "my_nets.py": """\
        from inflang.spec import MlpModel
        from runners.models.mlp import build_mlp

        def our_mlp(input_shape, classes, width=8):
            return build_mlp(MlpModel(arch="mlp", depth=1, width=width), input_shape, classes)
        """,
    "my_methods.py": """\
        def half_grad_dot(inputs, scale=1.0):
            dot = (inputs.test_gradients(native=True) @ inputs.train_gradients(native=True).T).double() / inputs.n
            return (0.5 * scale) * dot
        """,
}

BUILT_IN = """\
study: {name}
dataset: {{name: iris, test_size: 30}}
model: {{arch: mlp, depth: 1, width: 8}}
training: {{optimizer: adam, lr: 0.05, epochs: 200, weight_decay: 0.01, dtype: float64}}
estimators: [{{name: exact, damping: 0.01, negative: abs}}, {{name: grad_dot, label: dot}}]
test_points: {{count: 3}}
ground_truth: {{protocol: loo, steps: 30, removals: {{select: random, k: 12}}}}
metrics: [spearman]
"""

CUSTOM = """\
study: {name}
dataset: {{name: custom, loader: "my_data:iris", test_size: 30}}
model: {{arch: custom, factory: "my_nets:our_mlp", args: {{width: 8}}}}
training: {{optimizer: adam, lr: 0.05, epochs: 200, weight_decay: 0.01, dtype: float64}}
estimators:
  - {{name: exact, damping: 0.01, negative: abs}}
  - {{name: custom, scorer: "my_methods:half_grad_dot", args: {{scale: 2.0}}, label: dot, ranks_only: true}}
test_points: {{count: 3}}
ground_truth: {{protocol: loo, steps: 30, removals: {{select: random, k: 12}}}}
metrics: [spearman]
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, text in MODULES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def run(study: Path, db: Path, *extra: str):
    result = runner.invoke(app, ["run", str(study), "--db", str(db), *extra])
    assert result.exit_code == 0, result.output
    return result


def influence(db: Path, study: str) -> list[tuple]:
    return rows(db, f"SELECT estimator, test_index, train_index, estimate, actual FROM influence "
                    f"WHERE study = '{study}' ORDER BY ALL")


def test_custom_code_gives_the_rows_of_its_built_in_equivalent(folder: Path):
    """A loader returning scikit-learn's iris, a factory building inflang's MLP and a scorer that is 2 x
    (1/2) grad_dot: the same influence rows and metrics as iris, mlp and grad_dot, bit for bit."""
    (folder / "b.yaml").write_text(BUILT_IN.format(name="builtin"))
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom"))
    db = folder / "r.duckdb"
    run(folder / "b.yaml", db)
    run(folder / "c.yaml", db)
    assert influence(db, "builtin") == influence(db, "custom")
    metrics = "SELECT estimator, test_index, value FROM metrics WHERE study = '{}' ORDER BY ALL"
    assert rows(db, metrics.format("builtin")) == rows(db, metrics.format("custom"))


def test_editing_a_module_reruns_exactly_what_depends_on_it(folder: Path):
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom"))
    db = folder / "r.duckdb"
    run(folder / "c.yaml", db)
    assert "ran 0 tasks" in run(folder / "c.yaml", db).output
    # the scorer's module: its estimate and metrics tasks, nothing else
    (folder / "my_methods.py").write_text((folder / "my_methods.py").read_text() + "\n# a comment counts\n")
    assert "ran 2 tasks" in run(folder / "c.yaml", db).output
    # the factory's module: everything downstream of training (train, curvature, diagnose, 2 estimates, ground
    # truth, 2 metrics)
    (folder / "my_nets.py").write_text((folder / "my_nets.py").read_text() + "\n")
    assert "ran 8 tasks" in run(folder / "c.yaml", db).output
    # a helper file named in code: counts as the loader's code
    (folder / "helper.txt").write_text("v1")
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom").replace(
        'loader: "my_data:iris",', 'loader: "my_data:iris", code: [helper.txt],'))
    assert "ran 8 tasks" in run(folder / "c.yaml", db).output
    (folder / "helper.txt").write_text("v2")
    assert "ran 8 tasks" in run(folder / "c.yaml", db).output
    # moving the study and its modules elsewhere reruns nothing: the hash covers the code, not where it lies
    moved = folder / "moved"
    moved.mkdir()
    for name in ("my_data.py", "my_nets.py", "my_methods.py", "helper.txt", "c.yaml"):
        (moved / name).write_text((folder / name).read_text())
    assert "ran 0 tasks" in run(moved / "c.yaml", db).output


@pytest.mark.parametrize(("module", "text", "field", "message"), [
    ("my_data.py", "def iris():\n    return [[1.0, 2.0]] * 10, [0, 1] * 4\n", "dataset.loader",
     "returned 10 rows of x and 8 of y"),
    ("my_data.py", "import numpy as np\ndef iris():\n    x = np.ones((20, 2))\n    x[3, 1] = np.nan\n"
                   "    return x, np.arange(20) % 2\n", "dataset.loader", "NaN or infinite values in 1 rows"),
    ("my_data.py", "iris = 3\n", "dataset.loader", "my_data:iris is a int, not a function or class"),
    ("my_data.py", "def spirals():\n    pass\n", "dataset.loader", "module my_data has no attribute 'iris'"),
    ("my_nets.py", "def our_mlp(input_shape, classes, width=8):\n    return 'a network'\n", "model.factory",
     "returned a str, not a torch.nn.Module"),
    ("my_nets.py", "import torch\ndef our_mlp(input_shape, classes, width=8):\n"
                   "    return torch.nn.Linear(input_shape[0], 7)\n", "model.factory", "expected (2, 3)"),
    ("my_methods.py", "raise ImportError('broken on purpose')\n", "estimators.1.scorer",
     "importing my_methods raised ImportError: broken on purpose"),
])
def test_each_mistake_in_the_code_is_one_positioned_line(folder: Path, module: str, text: str, field: str,
                                                         message: str):
    (folder / module).write_text(text)
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom"))
    db = folder / "r.duckdb"
    result = runner.invoke(app, ["run", str(folder / "c.yaml"), "--db", str(db)])
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith(str(folder / "c.yaml"))]
    assert f": {field}: " in line and message in line, line
    assert "Traceback" not in result.output and not db.exists()  # nothing written
    plan = runner.invoke(app, ["plan", str(folder / "c.yaml"), "--db", str(db)])
    assert plan.exit_code == 2 and message in plan.output


def test_validate_finds_modules_without_running_them(folder: Path):
    (folder / "my_data.py").write_text("raise SystemExit('validate must not import me')\ndef iris(): pass\n")
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom"))
    assert runner.invoke(app, ["validate", str(folder / "c.yaml")]).exit_code == 0
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom").replace("my_nets:our_mlp", "my_netz:our_mlp"))
    result = runner.invoke(app, ["validate", str(folder / "c.yaml")])
    assert result.exit_code == 2 and ":3:" in result.output and "model.factory" in result.output
    assert "module 'my_netz' not found beside the study" in result.output
    bad = CUSTOM.format(name="custom").replace('"my_data:iris"', '"my_data.iris"')
    (folder / "c.yaml").write_text(bad)
    result = runner.invoke(app, ["validate", str(folder / "c.yaml")])
    assert result.exit_code == 2 and "is not module:callable" in result.output


def test_a_scorer_of_the_wrong_shape_fails_its_cell_with_one_line(folder: Path):
    (folder / "my_methods.py").write_text("import torch\ndef half_grad_dot(inputs, scale=1.0):\n"
                                          "    return torch.zeros(2, 5)\n")
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom"))
    result = runner.invoke(app, ["run", str(folder / "c.yaml"), "--db", str(folder / "r.duckdb")])
    assert result.exit_code == 1
    assert "custom estimator: my_methods:half_grad_dot returned scores of shape (2, 5); expected (test points, " \
           "training points) = (3, 120)" in result.output


def test_workers_and_ray_import_the_modules_beside_the_study(folder: Path):
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom"))
    here = folder / "here.duckdb"
    run(folder / "c.yaml", here)
    pool = folder / "pool.duckdb"
    run(folder / "c.yaml", pool, "--workers", "2")
    assert influence(here, "custom") == influence(pool, "custom")
    pytest.importorskip("ray")
    on_ray = folder / "ray.duckdb"
    run(folder / "c.yaml", on_ray, "--executor", "ray", "--workers", "2")
    assert influence(here, "custom") == influence(on_ray, "custom")


def test_float_targets_train_with_the_squared_error(folder: Path):
    (folder / "my_data.py").write_text(textwrap.dedent("""\
        import numpy as np

        def iris():
            rng = np.random.default_rng(0)
            x = rng.normal(size=(60, 3))
            return x, x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=60)
        """))
    study = CUSTOM.format(name="reg").replace('factory: "my_nets:our_mlp", args: {width: 8}', 'factory: '
                                               '"my_nets:our_mlp", args: {width: 4}').replace("test_size: 30",
                                                                                              "test_size: 10")
    (folder / "r.yaml").write_text(study)
    db = folder / "r.duckdb"
    run(folder / "r.yaml", db)
    ((loss,),) = rows(db, "SELECT train_loss FROM models")
    assert 0 < loss < 1.0  # a mean squared error on targets of variance ~5.3: fitted, and not cross-entropy


def test_a_module_vmap_cannot_batch_is_retrained_one_model_at_a_time(folder: Path):
    """A network whose forward pass branches on a value (data-dependent control flow) retrains sequentially,
    says so once, and gives the rows of the same network without the branch (to rounding)."""
    (folder / "my_nets.py").write_text(textwrap.dedent("""\
        import torch
        from inflang.spec import MlpModel
        from runners.models.mlp import build_mlp

        class Branching(torch.nn.Module):
            def __init__(self, inner, branch):
                super().__init__()
                self.inner, self.branch = inner, branch

            def forward(self, x):
                out = self.inner(x)
                if self.branch and float(out.detach().abs().sum()) < 0:  # never true, but vmap cannot know
                    return -out
                return out

        def our_mlp(input_shape, classes, width=8, branch=True):
            return Branching(build_mlp(MlpModel(arch="mlp", depth=1, width=width), input_shape, classes), branch)
        """))
    (folder / "c.yaml").write_text(CUSTOM.format(name="plain").replace("args: {width: 8}",
                                                                       "args: {width: 8, branch: false}"))
    (folder / "s.yaml").write_text(CUSTOM.format(name="branchy"))
    db = folder / "r.duckdb"
    run(folder / "c.yaml", db)
    planned = runner.invoke(app, ["plan", str(folder / "s.yaml"), "--db", str(db)])
    assert planned.exit_code == 0, planned.output
    assert "Branching cannot be batched over models (" in planned.output
    assert "as batched ensembles" not in planned.output
    result = run(folder / "s.yaml", db)
    assert result.output.count("cannot be batched over models") == 1
    (line,) = [x for x in result.output.splitlines() if "cannot be batched over models" in x]
    reason = line.split("(", 1)[1].rsplit(")", 1)[0]
    assert reason in planned.output and reason.endswith(".")  # whole: vmap's first line, not cut mid-word
    engines = rows(db, "SELECT engine FROM tasks WHERE kind = 'ground_truth' AND engine LIKE "
                       "'eager (looped: Branching cannot be batched over models%'")
    assert len(engines) == 1 and reason in engines[0][0], rows(db, "SELECT kind, engine FROM tasks")
    (log,) = sorted((folder / ".inflang" / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)[-1:]
    assert "looped ground_truth" in log.read_text() and reason in log.read_text()
    plain, branchy = influence(db, "plain"), influence(db, "branchy")
    assert len(plain) == len(branchy) and all(a[:3] == b[:3] and (a[4] is None or abs(a[4] - b[4]) < 1e-10)
                                              for a, b in zip(plain, branchy, strict=True))


def test_two_folders_with_modules_of_the_same_names_each_import_their_own(tmp_path: Path):
    """In one process (a notebook), two studies whose my_nets.py import a neighbour helper.py of their own:
    each builds its own network; an edited module is loaded anew."""
    from runners.custom import resolve

    sizes = {}
    for name, width in (("a", 3), ("b", 5)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "helper.py").write_text(f"WIDTH = {width}\n")
        (folder / "my_nets.py").write_text("import torch\nimport helper\n"
                                           "def net(shape, classes):\n    return torch.nn.Linear(helper.WIDTH, 2)\n")
        sizes[name] = resolve("my_nets:net", str(folder))((1,), 2).in_features
    assert sizes == {"a": 3, "b": 5}
    (tmp_path / "a" / "my_nets.py").write_text("import torch\ndef net(shape, classes):\n"
                                               "    return torch.nn.Linear(7, 2)\n")
    assert resolve("my_nets:net", str(tmp_path / "a"))((1,), 2).in_features == 7


def test_a_relative_folder_is_the_study_files_not_the_working_directorys(folder: Path, monkeypatch):
    code = folder / "code"
    code.mkdir()
    for name in MODULES:
        (code / name).write_text((folder / name).read_text())
        (folder / name).unlink()
    (folder / "c.yaml").write_text(CUSTOM.format(name="custom").replace(
        'loader: "my_data:iris",', 'loader: "my_data:iris", folder: code,').replace(
        'factory: "my_nets:our_mlp",', 'factory: "my_nets:our_mlp", folder: code,').replace(
        'scorer: "my_methods:half_grad_dot",', 'scorer: "my_methods:half_grad_dot", folder: code,'))
    monkeypatch.chdir("/")
    assert runner.invoke(app, ["plan", str(folder / "c.yaml"), "--db", str(folder / "r.duckdb")]).exit_code == 0


def test_measuring_the_refits_gradients_leaves_running_statistics_alone():
    """Warm-start retraining measures each model's gradient before and after; with BatchNorm, those extra
    training-mode passes must not move the running statistics training computes."""
    import torch
    from torch import nn

    from runners.ensemble import UpdateRule, stack, train_ensemble, weighted_cross_entropy

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    start = stack({k: v.detach() for k, v in [*module.named_parameters(), *module.named_buffers()]}, 2)
    rule = UpdateRule(optimizer="sgd", lr=0.1, weight_decay=0.0, momentum=0.0)
    weights = torch.ones(2, 16, dtype=torch.float64)
    plain = train_ensemble(module, {k: v.clone() for k, v in start.items()}, x, rule, 3, None, [0, 0],
                           weighted_cross_entropy(y, weights), engine="eager")
    norms: list = []
    measured = train_ensemble(module, {k: v.clone() for k, v in start.items()}, x, rule, 3, None, [0, 0],
                              weighted_cross_entropy(y, weights), engine="eager", gradient_norms=norms)
    assert norms and all(torch.equal(plain[k], measured[k]) for k in plain)


BRANCH_ON_INPUTS = """\
    import torch
    from inflang.spec import MlpModel
    from runners.models.mlp import build_mlp

    class OnInputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if float(x.detach().abs().sum()) < 0:  # branches on the inputs only: models batch, examples do not
                x = -x
            return self.inner(x)

    def our_mlp(input_shape, classes, width=8):
        return OnInputs(build_mlp(MlpModel(arch="mlp", depth=1, width=width), input_shape, classes))
    """


def test_per_example_gradients_taken_one_at_a_time_are_said_once_per_run_with_workers(folder: Path):
    """A network vmap batches over models but not over examples: plan says the per-example gradients loop, and a
    run with two workers says so once (not once per worker process), and records it with the task."""
    (folder / "my_nets.py").write_text(textwrap.dedent(BRANCH_ON_INPUTS))
    (folder / "c.yaml").write_text(CUSTOM.format(name="inputs"))
    db = folder / "r.duckdb"
    planned = runner.invoke(app, ["plan", str(folder / "c.yaml"), "--db", str(db)])
    assert planned.exit_code == 0, planned.output
    assert "OnInputs cannot be batched over examples (" in planned.output
    assert "over models" not in planned.output and "as batched ensembles" in planned.output, planned.output[-1500:]
    result = run(folder / "c.yaml", db, "--workers", "2")
    assert result.output.count("OnInputs cannot be batched over examples") == 1, result.output
    assert rows(db, "SELECT count(*) FROM tasks WHERE kind = 'estimate' AND engine LIKE "
                    "'eager (looped: OnInputs cannot be batched over examples%'")[0][0] >= 1


def test_float_zero_one_labels_warn_at_the_loader(folder: Path):
    (folder / "my_data.py").write_text(textwrap.dedent("""\
        import numpy as np
        from sklearn.datasets import load_iris

        def iris():
            bunch = load_iris()
            return np.asarray(bunch.data, dtype=np.float64), (np.asarray(bunch.target) == 1).astype(np.float64)
        """))
    (folder / "my_nets.py").write_text(textwrap.dedent(MODULES["my_nets.py"]).replace("width=8", "width=4"))
    study = folder / "c.yaml"
    study.write_text(CUSTOM.format(name="floats"))
    db = folder / "r.duckdb"
    expected = (f"{study}:2:"  # the loader's value, on line 2
                ": dataset.loader: warning: labels are float: regression with the squared error; return integers "
                "for classification")
    planned = runner.invoke(app, ["plan", str(study), "--db", str(db)])
    assert planned.exit_code == 0 and planned.output.count("labels are float") == 1, planned.output
    (line,) = [x for x in planned.output.splitlines() if "labels are float" in x]
    assert line.startswith(f"{study}:2:") and line.endswith(expected.split(":2:", 1)[1]), line
    assert run(study, db).output.count("labels are float") == 1
    import inflang

    with pytest.warns(UserWarning, match="labels are float: regression with the squared error"):
        inflang.load(study)  # the Python API says it too
    (folder / "my_data.py").write_text(textwrap.dedent(MODULES["my_data.py"]))  # integer labels: no warning
    assert "labels are float" not in runner.invoke(app, ["plan", str(study), "--db", str(db)]).output


def test_a_rate_measured_before_the_module_changed_is_not_reused(folder: Path, monkeypatch):
    monkeypatch.setenv("INFLANG_CACHE", str(folder / "cache"))
    (folder / "c.yaml").write_text(CUSTOM.format(name="priced"))
    plan = ["plan", str(folder / "c.yaml"), "--db", str(folder / "r.duckdb"), "--engine", "eager"]
    calibrated = runner.invoke(app, [*plan, "--calibrate"])
    assert calibrated.exit_code == 0 and "time: about" in calibrated.output, calibrated.output
    assert "time: about" in runner.invoke(app, plan).output  # measured: priced from the cache
    (folder / "my_nets.py").write_text((folder / "my_nets.py").read_text() + "\n# edited\n")
    edited = runner.invoke(app, plan)
    assert edited.exit_code == 0 and "have no rate measured" in edited.output, edited.output
