"""Datasets in their real formats (written here, tiny), label noise, and the image architectures."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from pydantic import TypeAdapter
from typer.testing import CliRunner

from inflang.cli import app
from inflang.spec import (
    CnnModel,
    DatasetSpec,
    FileDataset,
    LenetModel,
    MlpModel,
    ResnetModel,
    SyntheticDataset,
    VggModel,
)
from inflang.spec.dataset import DatasetInfo
from runners.data import load_raw, prepare
from runners.data.split import flip_labels
from runners.ensemble import UpdateRule, activations_per_example, stack, train_ensemble, weighted_cross_entropy
from runners.errors import TaskFailure
from runners.models import build

runner = CliRunner()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_mnist(root: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, size=(n_train + n_test, 28, 28))
    labels = np.arange(n_train + n_test) % 10
    write_idx(root / "train-images-idx3-ubyte", images[:n_train], gz)
    write_idx(root / "train-labels-idx1-ubyte", labels[:n_train], gz)
    write_idx(root / "t10k-images-idx3-ubyte", images[n_train:], not gz)
    write_idx(root / "t10k-labels-idx1-ubyte", labels[n_train:], not gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_read_back(tmp_path: Path, gz: bool):
    images, labels = make_mnist(tmp_path, gz=gz)
    raw = load_raw(FileDataset(name="mnist", root=str(tmp_path)))
    assert raw.x.shape == (80, 1, 28, 28) and raw.classes == 10
    assert np.allclose(raw.x[:, 0] * 255, images) and (raw.y == labels).all()
    assert (raw.fixed_test == np.arange(60, 80)).all()
    spec = FileDataset(name="fashion_mnist", root=str(tmp_path), test_size=10)
    data = prepare(spec, raw, seed=0, dtype=torch.float32)
    assert data.n_train == 60 and len(data.test_ids) == 10 and (data.test_ids >= 60).all()


def test_small_mnist_keeps_a_tenth_after_the_holdout(tmp_path: Path):
    make_mnist(tmp_path, n_train=5200, n_test=10)
    raw = load_raw(FileDataset(name="small_mnist", root=str(tmp_path)))
    assert len(raw.y) == 20 + 10  # 10% of the 200 images beyond the 5,000 held out, then the test set


def test_cifar_batches_read_back(tmp_path: Path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=4))
        written.append((data, labels))
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    raw = load_raw(FileDataset(name="cifar10", root=str(tmp_path)))
    assert raw.x.shape == (24, 3, 32, 32) and (raw.fixed_test == np.arange(20, 24)).all()
    assert np.allclose(raw.x[0] * 255, written[0][0][0].reshape(3, 32, 32))
    assert list(raw.y[-4:]) == written[-1][1]


def test_cifar_refuses_other_pickled_objects(tmp_path: Path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0], b"x": Path(".")}, fh)
    with pytest.raises(TaskFailure, match="refusing to unpickle"):
        load_raw(FileDataset(name="cifar100", root=str(tmp_path)))


def test_missing_files_say_what_and_where(tmp_path: Path):
    with pytest.raises(TaskFailure, match="expected train-images-idx3-ubyte.*obtain them from"):
        load_raw(FileDataset(name="mnist", root=str(tmp_path)))


@pytest.mark.parametrize("kind", ["blobs", "moons", "linear"])
def test_synthetic_generators_are_seeded(kind: str):
    spec = SyntheticDataset(name="synthetic", kind=kind, samples=90, features=3, classes=3)
    a, b = load_raw(spec), load_raw(spec)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert a.x.shape[0] == 90 and a.x.shape[1] == spec.info().features and a.classes == spec.info().classes


def test_label_noise_flips_the_asked_fraction_to_other_classes():
    y = np.arange(100) % 4
    noisy, flipped = flip_labels(y, 0.2, 4, seed=3)
    assert flipped.sum() == 20 and (noisy[flipped] != y[flipped]).all() and (noisy[~flipped] == y[~flipped]).all()


@pytest.mark.parametrize("model", [
    CnnModel(arch="cnn", depth=2, channels=4), LenetModel(arch="lenet"),
    MlpModel(arch="mlp", depth=1, width=7), VggModel(arch="vgg", depth=11, width_multiplier=0.0625),
    ResnetModel(arch="resnet", depth=20, width_multiplier=0.25),
    ResnetModel(arch="resnet", depth=20, norm="batch", width_multiplier=0.25),
    ResnetModel(arch="resnet", depth=18, norm="none", width_multiplier=0.125),
    ResnetModel(arch="resnet", depth=50, width_multiplier=0.0625)])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_image_models_match_their_specs_and_retrain_batched(model, shape):
    if model.arch == "vgg" and shape[1] < 32:
        pytest.skip("vgg needs 32x32 images")
    info = DatasetInfo(rows=10, features=int(np.prod(shape)), classes=10, shape=shape)
    module = build(model, shape, 10, seed=0, dtype=torch.float64)
    assert sum(p.numel() for p in module.parameters()) == model.n_params(info)
    assert activations_per_example(module, shape) == model.activations_per_example(info)
    x = torch.randn(6, *shape, dtype=torch.float64)
    y = torch.arange(6) % 10
    assert module(x).shape == (6, 10)
    start = {k: v.detach() for k, v in module.named_parameters()}
    rule = UpdateRule(optimizer="sgd", lr=0.1, weight_decay=0.0)
    out = train_ensemble(module, stack(start, 3), x, rule, 1, None, [0] * 3,
                         weighted_cross_entropy(y, torch.ones(3, 6, dtype=torch.float64)))
    assert all(torch.isfinite(v).all() for v in out.values())


def test_mnist_study_end_to_end_with_root_relative_to_the_study(tmp_path: Path):
    make_mnist(tmp_path / "data" / "mnist", n_train=60, n_test=20)
    study = tmp_path / "s.yaml"
    study.write_text("""\
study: tiny-mnist
dataset: {name: mnist, root: data/mnist, test_size: 10, label_noise: 0.1}
model: {arch: cnn, depth: 2, channels: 2}
training: {optimizer: adam, lr: 0.01, epochs: 20}
estimators: [{name: exact, damping: 0.1, negative: abs}, {name: grad_dot}]
test_points: {count: 2}
ground_truth: {protocol: loo, steps: 5, removals: {select: random, k: 4}}
""")
    db = tmp_path / "m.duckdb"
    result = runner.invoke(app, ["run", str(study), "--db", str(db)])
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM influence WHERE actual IS NOT NULL").fetchone()[0] == 2 * 4 * 2
    assert con.execute("SELECT count(*) FROM splits WHERE label_flipped").fetchone()[0] == 6
    con.close()


def test_dataset_spec_union():
    spec = TypeAdapter(DatasetSpec).validate_python({"name": "synthetic", "kind": "moons"})
    assert spec.info().features == 2


def test_batchnorm_refuses_what_needs_one_function_of_the_parameters(write):
    from inflang.compiling.validate import load_study
    from inflang.errors import StudyError

    path = write("bn.yaml", "study: bn\ndataset: {name: digits}\nmodel: {arch: resnet, depth: 20, norm: batch}\n"
                            "estimators: [{name: grad_dot}]\nground_truth: {protocol: pbrf}\n")
    with pytest.raises(StudyError, match="BatchNorm trains on batch statistics"):
        load_study(path)
    path = write("vgg.yaml", "study: v\ndataset: {name: digits}\nmodel: {arch: vgg}\nestimators: [{name: grad_dot}]\n")
    with pytest.raises(StudyError, match="vgg halves the image five times"):
        load_study(path)


def make_folder(root: Path, split: bool) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    parts = [root / "train", root / "val"] if split else [root]
    for part in parts:
        for c, name in enumerate(["cat", "dog", "fox"]):
            (part / name).mkdir(parents=True, exist_ok=True)
            for i in range(6 if part.name != "val" else 2):
                pixels = (rng.integers(0, 256, size=(12, 10, 3)) // (c + 1)).astype(np.uint8)
                Image.fromarray(pixels).save(part / name / f"{i}.png")
    (root / ("train" if split else "") / "cat" / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("split", [False, True])
def test_imagefolder_reads_class_folders(tmp_path: Path, split: bool):
    from inflang.spec import ImageFolderDataset

    make_folder(tmp_path, split)
    spec = ImageFolderDataset(name="imagefolder", root=str(tmp_path), image_size=8)
    raw = load_raw(spec)
    assert raw.x.shape == ((18 + 6) if split else 18, 3, 8, 8) and raw.classes == 3
    assert list(raw.y[:6]) == [0] * 6
    assert (raw.fixed_test is not None) == split
    info = spec.info()
    assert info.rows == len(raw.y) and info.classes == 3 and info.shape == (3, 8, 8)


def test_imagefolder_study_end_to_end(tmp_path: Path, write):
    make_folder(tmp_path / "images", split=False)
    study = tmp_path / "s.yaml"
    study.write_text("""\
study: folder
dataset: {name: imagefolder, root: images, image_size: 8, test_size: 6}
model: {arch: resnet, depth: 20, width_multiplier: 0.25}
training: {optimizer: adam, lr: 0.01, epochs: 3}
estimators: [{name: grad_dot, params: last_layer}]
test_points: {count: 2}
ground_truth: {protocol: loo, steps: 2, removals: {select: random, k: 3}}
""")
    result = runner.invoke(app, ["run", str(study), "--db", str(tmp_path / "f.duckdb")])
    assert result.exit_code == 0, result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = write("bad.yaml", "study: f\ndataset: {name: imagefolder, root: empty}\nmodel: {arch: cnn}\n"
                            "estimators: [{name: grad_dot}]\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2 and "no class folders with images" in result.output


def test_download_fetches_missing_idx_files_from_a_mirror(tmp_path: Path, write):
    """download: true fills root from the mirror (a file:// folder here) before the run; the plan's hashes do
    not depend on where the files came from."""
    make_mnist(tmp_path / "mirror", n_train=60, n_test=20, gz=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # the mirror serves every file gzipped
        raw_file = tmp_path / "mirror" / name
        (tmp_path / "mirror" / (name + ".gz")).write_bytes(gzip.compress(raw_file.read_bytes()))
        raw_file.unlink()
    text = f"""\
study: fetched
dataset: {{name: mnist, root: data, test_size: 10, download: true, mirror: "{(tmp_path / 'mirror').as_uri()}"}}
model: {{arch: logreg}}
training: {{optimizer: adam, lr: 0.01, epochs: 5}}
estimators: [{{name: grad_dot}}]
test_points: {{count: 2}}
ground_truth: {{protocol: loo, steps: 2, removals: {{select: random, k: 2}}}}
"""
    study = write("fetch.yaml", text)
    result = runner.invoke(app, ["run", str(study), "--db", str(tmp_path / "f.duckdb")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (study.parent / "data").iterdir()) == sorted(
        f + ".gz" for f in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                            "t10k-labels-idx1-ubyte"])
    from inflang.compiling.plan import compile_study
    from inflang.compiling.validate import load_study

    fetched = compile_study(load_study(study))
    plain = compile_study(load_study(write("plain.yaml", text.replace("download: true", "download: false"))))
    assert set(fetched.tasks) == set(plain.tasks)


def test_download_failure_is_a_clear_error(tmp_path: Path, write):
    text = f"""\
study: nothing-there
dataset: {{name: cifar10, root: data, download: true, mirror: "{(tmp_path / 'empty').as_uri()}"}}
model: {{arch: logreg}}
estimators: [{{name: grad_dot}}]
ground_truth: {{protocol: loo, steps: 2, removals: {{select: random, k: 2}}}}
"""
    db = tmp_path / "f.duckdb"
    result = runner.invoke(app, ["run", str(write("s.yaml", text)), "--db", str(db)])
    assert result.exit_code == 2
    assert "could not download" in result.output and "cifar-10-python.tar.gz" in result.output
    assert "Traceback" not in result.output
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    con.close()


def test_cifar_archive_is_unpacked_and_hostile_members_refused(tmp_path: Path):
    import io
    import tarfile

    from inflang.spec import FileDataset as Spec
    from runners.data.download import DownloadError, ensure_files

    def archive(path: Path, members: dict[str, bytes]) -> None:
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    rng = np.random.default_rng(0)
    batch = pickle.dumps({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 2]})
    good = tmp_path / "good"
    good.mkdir()
    archive(good / "cifar-10-python.tar.gz", {f"cifar-10-batches-py/{n}": batch for n in
                                              [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]})
    spec = Spec(name="cifar10", root=str(tmp_path / "root"), download=True, mirror=good.as_uri())
    assert ensure_files(spec) == ["cifar-10-python.tar.gz"]
    assert load_raw(spec).x.shape == (12, 3, 32, 32)
    assert not (tmp_path / "root" / "cifar-10-python.tar.gz").exists()
    evil = tmp_path / "evil"
    evil.mkdir()
    archive(evil / "cifar-10-python.tar.gz", {"../escaped": b"x"})
    bad = Spec(name="cifar10", root=str(tmp_path / "root2"), download=True, mirror=evil.as_uri())
    with pytest.raises(DownloadError, match="refusing archive member"):
        ensure_files(bad)
    assert not (tmp_path / "escaped").exists()


def test_synthetic_images_are_seeded_balanced_and_learnable():
    """kind: images gives image_shape images, balanced classes, the same rows for the same spec; each class is
    its template up to shift, contrast and noise, so even the nearest class mean (blurred by the shifts) beats
    chance by three standard deviations."""
    import numpy as np

    from inflang.spec import SyntheticDataset
    from runners.data.synthetic import load_synthetic

    spec = SyntheticDataset(name="synthetic", kind="images", samples=200, classes=4, noise=0.5,
                            image_shape=(3, 16, 16))
    raw = load_synthetic(spec)
    assert raw.x.shape == (200, 3, 16, 16) and raw.classes == 4
    assert np.bincount(raw.y).tolist() == [50, 50, 50, 50]
    assert np.array_equal(load_synthetic(spec).x, raw.x)
    assert spec.info().shape == (3, 16, 16) and spec.info().features == 768
    other = load_synthetic(spec.model_copy(update={"noise": 0.6}))
    assert not np.array_equal(other.x, raw.x)
    train, test = slice(0, 120), slice(120, 200)
    means = np.stack([raw.x[train][raw.y[train] == k].mean(axis=0).ravel() for k in range(4)])
    guess = np.argmax(raw.x[test].reshape(80, -1) @ means.T - 0.5 * (means**2).sum(axis=1), axis=1)
    assert (guess == raw.y[test]).mean() > 0.4  # chance 0.25, its sd over 80 points 0.05


@pytest.mark.parametrize("name", ["iris", "digits", "breast_cancer", "wine"])
def test_bundled_files_read_as_scikit_learn_reads_them(name: str):
    from sklearn import datasets

    from inflang.spec import BundledDataset
    from runners.data.bundled import load_bundled

    raw = load_bundled(BundledDataset(name=name))
    bunch = getattr(datasets, f"load_{name}")()
    assert np.array_equal(raw.x.reshape(len(raw.x), -1), bunch.data) and raw.x.dtype == np.float64
    assert np.array_equal(raw.y, bunch.target) and raw.classes == len(bunch.target_names)
    assert raw.x.shape[1:] == ((1, 8, 8) if name == "digits" else bunch.data.shape[1:])


def _sklearn_split(ids, seed, train_size=None, test_size=None, labels=None):
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(ids, train_size=train_size, test_size=test_size, stratify=labels,
                                   random_state=seed)
    return np.asarray(train), np.asarray(test)


def test_shuffle_splits_are_scikit_learns_row_for_row():
    """The NumPy split (no scikit-learn import at run time) against train_test_split: stratified and not,
    fractions and counts, tied remainders, skewed and tiny classes, the refusals."""
    from runners.data.shuffle_split import shuffle_split

    rng = np.random.default_rng(0)
    compared = refused = 0
    for case in range(400):
        n = int(rng.integers(4, 400))
        ids = np.arange(n) + int(rng.integers(0, 1000))
        classes = int(rng.integers(1, 8))
        weights = rng.dirichlet(np.full(classes, 0.3 if case % 3 == 0 else 5.0))
        labels = rng.choice(classes, size=n, p=weights) if case % 5 else None
        sizes = [dict(test_size=float(rng.uniform(0.05, 0.6))), dict(test_size=int(rng.integers(1, n))),
                 dict(train_size=float(rng.uniform(0.1, 0.9))), dict(train_size=int(rng.integers(1, n)))]
        seed = int(rng.integers(0, 2**32 - 1))
        for size in sizes:
            try:
                expected = _sklearn_split(ids, seed, labels=labels, **size)
            except ValueError:
                with pytest.raises(ValueError):
                    shuffle_split(ids, seed, labels=labels, **size)
                refused += 1
                continue
            got = shuffle_split(ids, seed, labels=labels, **size)
            assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]), (case, size)
            compared += 1
    assert compared > 1000 and refused > 50
    ids, labels = np.arange(20), np.repeat([0, 1], 10)
    edges = [dict(test_size=0), dict(test_size=0.0), dict(train_size=1.0), dict(train_size=20), dict(test_size=20),
             dict(train_size=np.float64(0.5)), dict(test_size=np.int64(5)), {},
             dict(train_size=0.7, test_size=0.4), dict(train_size=0.5, test_size=0.3), dict(test_size=True)]
    for size in edges:
        for given in (None, labels):
            try:
                expected = _sklearn_split(ids, 7, labels=given, **size)
            except ValueError:
                with pytest.raises(ValueError):
                    shuffle_split(ids, 7, labels=given, **size)
                continue
            got = shuffle_split(ids, 7, labels=given, **size)
            assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]), size
    # a NumPy float32 size (which scikit-learn refuses) is a fraction, never truncated to a count of 0
    for got, expected in zip(shuffle_split(ids, 7, test_size=np.float32(0.25), labels=labels),
                             shuffle_split(ids, 7, test_size=0.25, labels=labels), strict=True):
        assert np.array_equal(got, expected)
