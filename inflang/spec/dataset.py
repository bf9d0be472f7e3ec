"""``dataset:`` -- which data, how it is split and scaled, discriminated by ``name``.

A new dataset family is one model here (added to ``DatasetSpec``) plus one loader in ``runners/data``.
Row ids are positions in the dataset as its loader returns it, before any split: for file datasets with
an official split, the training files' rows come first and the test files' rows after them.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator

from inflang.spec.base import CodeFields, Spec


@dataclass(frozen=True)
class DatasetInfo:
    """What the compiler knows about a dataset without loading it (sizes, for checks and cost)."""

    rows: int
    features: int
    classes: int  # classes, or for regression the number of targets (the model's outputs either way)
    test_rows: int | None = None  # rows of the official test split, if the dataset has one
    shape: tuple[int, ...] | None = None  # image shape (channels, height, width) for image datasets
    regression: bool = False  # real-valued targets and the squared-error loss
    known: bool = True  # False: a custom loader not run yet (inflang validate): sizes are placeholders
    whole_targets: bool = False  # regression targets that are all whole numbers (e.g. 0/1 labels given as floats)


# the placeholder of a custom dataset whose loader has not run: large enough that no size check refuses it
UNKNOWN = DatasetInfo(rows=10**9, features=1, classes=2, known=False)


BUNDLED: dict[str, DatasetInfo] = {
    "iris": DatasetInfo(rows=150, features=4, classes=3),
    "digits": DatasetInfo(rows=1797, features=64, classes=10, shape=(1, 8, 8)),
    "breast_cancer": DatasetInfo(rows=569, features=30, classes=2),
    "wine": DatasetInfo(rows=178, features=13, classes=3),
}

FILES: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(rows=70000, features=784, classes=10, test_rows=10000, shape=(1, 28, 28)),
    "fashion_mnist": DatasetInfo(rows=70000, features=784, classes=10, test_rows=10000, shape=(1, 28, 28)),
    "small_mnist": DatasetInfo(rows=15500, features=784, classes=10, test_rows=10000, shape=(1, 28, 28)),
    "cifar10": DatasetInfo(rows=60000, features=3072, classes=10, test_rows=10000, shape=(3, 32, 32)),
    "cifar100": DatasetInfo(rows=60000, features=3072, classes=100, test_rows=10000, shape=(3, 32, 32)),
}


class DatasetBase(Spec):
    test_size: int | float = Field(
        0.2, description="test points: an int (count) or a float in (0, 1) (fraction); stratified. For datasets "
        "with an official test split, how many of its points to keep")
    subsample: Annotated[int, Field(gt=0)] | None = Field(
        None, description="keep this many training points (seeded, stratified); null keeps all")
    standardize: bool = Field(True, description="z-score features (images: channels) with training statistics")
    label_noise: float = Field(0.0, ge=0, lt=1, description="flip this fraction of training labels (seeded) to "
                               "another class; the flipped rows are recorded in the splits table")

    @field_validator("test_size", mode="before")
    @classmethod
    def _count_or_fraction(cls, value: object) -> object:
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
            isinstance(value, float) and 0 < value < 1)
        if not ok:
            raise ValueError(f"must be a count (an int >= 1) or a fraction in (0, 1), got {value!r}")
        return value

    # (package, how to install it) for a dataset that a package makes: ``validate`` checks it is installed
    made_by: ClassVar[tuple[str, str] | None] = None

    @abstractmethod
    def info(self) -> DatasetInfo:
        """Sizes known before loading."""

    def split_sizes(self) -> tuple[int, int]:
        """(n_train, n_test) after the split and subsampling, as the loader will produce them."""
        info = self.info()
        pool = info.test_rows if info.test_rows is not None else info.rows
        n_test = self.test_size if isinstance(self.test_size, int) else int(round(self.test_size * pool))
        n_test = min(n_test, pool)
        n_train = info.rows - (info.test_rows if info.test_rows is not None else n_test)
        if self.subsample is not None:
            n_train = min(n_train, self.subsample)
        return n_train, n_test


class BundledDataset(DatasetBase):
    """A classification dataset shipped with scikit-learn (no download)."""

    name: Literal["iris", "digits", "breast_cancer", "wine"] = Field(
        description="iris | digits | breast_cancer | wine (scikit-learn's bundled copies)")
    root: str | None = Field(None, description="unused by bundled datasets")

    def info(self) -> DatasetInfo:
        return BUNDLED[self.name]


class SyntheticDataset(DatasetBase):
    """Seeded generated data (scikit-learn's generators): classification, or ``kind: regression`` (real-valued
    targets, trained with the squared-error loss), or ``kind: images`` (CIFAR-sized images of smooth class
    templates, shifted and scaled per image, plus pixel noise: for image architectures without a download)."""

    name: Literal["synthetic"]
    kind: Literal["blobs", "moons", "linear", "regression", "images"] = Field(
        "blobs", description="blobs (Gaussian clusters) | moons (two interleaved half circles) | linear "
        "(linearly separable classes) | regression (a random linear model plus Gaussian noise) | images "
        "(image_shape images: a smooth random template per class, shifted by up to 1/8 of the side and "
        "scaled per image, plus Gaussian pixel noise)")
    samples: int = Field(200, ge=4, le=1_000_000, description="rows generated")
    features: int = Field(2, ge=1, le=10_000, description="features (moons: 2)")
    classes: int = Field(2, ge=2, le=100, description="classes (moons: 2; not used by regression)")
    targets: int = Field(1, ge=1, le=100, description="regression: real-valued targets per row")
    noise: float = Field(0.1, ge=0, description="blobs: cluster spread; moons: Gaussian noise; linear: label "
                         "flips; regression: standard deviation of the targets' noise; images: standard deviation "
                         "of the pixel noise (the templates have unit standard deviation)")
    image_shape: tuple[int, int, int] = Field((3, 32, 32), description="images: (channels, height, width)")

    @field_validator("image_shape")
    @classmethod
    def _positive_shape(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1 or value[1] > 512 or value[2] > 512 or value[0] > 16:
            raise ValueError(f"must be (channels <= 16, height <= 512, width <= 512), all >= 1, got {list(value)}")
        return value

    def info(self) -> DatasetInfo:
        if self.kind == "regression":
            return DatasetInfo(rows=self.samples, features=self.features, classes=self.targets, regression=True)
        if self.kind == "images":
            c, h, w = self.image_shape
            return DatasetInfo(rows=self.samples, features=c * h * w, classes=self.classes, shape=(c, h, w))
        features = 2 if self.kind == "moons" else self.features
        classes = 2 if self.kind == "moons" else self.classes
        return DatasetInfo(rows=self.samples, features=features, classes=classes)


class FileDataset(DatasetBase):
    """Standard files read from ``root``: MNIST-style IDX files (gzipped or not) or the CIFAR python pickle
    batches; nothing is downloaded unless ``download: true``. small_mnist is Koh & Liang's: 5,000 of the
    60,000 training images held out, a seeded 10% of the other 55,000 kept, and the full 10,000-image test
    set."""

    name: Literal["mnist", "fashion_mnist", "small_mnist", "cifar10", "cifar100"]
    root: str = Field(description="directory holding the dataset's files (relative to the study file)")
    download: bool = Field(False, description="fetch missing files into root before the run (from mirror); "
                           "off by default, so nothing is downloaded implicitly")
    mirror: str | None = Field(None, description="base URL the standard file names are fetched from when "
                               "download is on (http, https or file); default: the dataset's usual host")
    test_size: int | float = Field(
        1.0, description="how many (int) or what fraction (float) of the official test split to keep")

    @field_validator("test_size", mode="before")
    @classmethod
    def _count_or_fraction(cls, value: object) -> object:
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
            isinstance(value, float) and 0 < value <= 1)
        if not ok:
            raise ValueError(f"must be a count (an int >= 1) or a fraction in (0, 1], got {value!r}")
        return value

    def info(self) -> DatasetInfo:
        return FILES[self.name]


def expected_files(name: str) -> tuple[list[str], str]:
    """The files a file dataset reads under ``root`` (IDX files may also end in .gz), and where to get them."""
    if name in ("mnist", "fashion_mnist", "small_mnist"):
        files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"]
        source = ("https://github.com/zalandoresearch/fashion-mnist" if name == "fashion_mnist"
                  else "http://yann.lecun.com/exdb/mnist/ or any MNIST mirror")
        return files, source
    if name == "cifar10":
        return ([f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)] + ["cifar-10-batches-py/test_batch"],
                "https://www.cs.toronto.edu/~kriz/cifar.html (the python version)")
    return (["cifar-100-python/train", "cifar-100-python/test"],
            "https://www.cs.toronto.edu/~kriz/cifar.html (the python version)")


MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "small_mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
}


def downloads(name: str) -> list[str]:
    """The file names ``download: true`` fetches from the mirror (CIFAR archives are unpacked into root)."""
    if name == "cifar10":
        return ["cifar-10-python.tar.gz"]
    if name == "cifar100":
        return ["cifar-100-python.tar.gz"]
    return [f + ".gz" for f in expected_files(name)[0]]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm")


@dataclass(frozen=True)
class FolderLayout:
    """Images found under an imagefolder root: (class names, train files, test files or None)."""

    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]  # (path, class index), sorted
    test: tuple[tuple[str, int], ...] | None


@functools.lru_cache(maxsize=8)
def scan_folder(root: str) -> FolderLayout:
    """Class-per-folder images: root/CLASS/IMAGE, or root/train/CLASS/IMAGE with root/val (or test)/CLASS/..."""
    base = Path(root)

    def images(folder: Path, classes: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
        return tuple((str(p), i) for i, c in enumerate(classes) if (folder / c).is_dir()
                     for p in sorted((folder / c).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)

    split = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    source = base / "train" if (base / "train").is_dir() and split is not None else base
    classes = tuple(sorted(p.name for p in source.iterdir() if p.is_dir())) if source.is_dir() else ()
    return FolderLayout(classes, images(source, classes),
                        images(split, classes) if source != base and split is not None else None)


class ImageFolderDataset(DatasetBase):
    """Images in class folders under ``root`` (ImageNet-style subsets), decoded with Pillow and resized to
    ``image_size`` square; ``root/train`` and ``root/val`` (or ``test``) give an official split."""

    name: Literal["imagefolder"]
    root: str = Field(description="folder of class folders (or of train/ and val/ with class folders)")
    image_size: int = Field(32, ge=4, le=1024, description="images are resized to this many pixels square")
    channels: Literal[1, 3] = Field(3, description="3 (RGB) or 1 (grayscale)")

    def info(self) -> DatasetInfo:
        layout = scan_folder(self.root)
        test = len(layout.test) if layout.test is not None else None
        rows = len(layout.train) + (test or 0)
        shape = (self.channels, self.image_size, self.image_size)
        return DatasetInfo(rows=rows, features=self.channels * self.image_size ** 2,
                           classes=max(1, len(layout.classes)), test_rows=test, shape=shape)


class Mnist1dDataset(DatasetBase):
    """MNIST-1D (Greydanus 2020, "Scaling Down Deep Learning"): 5,000 signals of length 40 in 10 classes, made
    offline and deterministically by the ``mnist1d`` package's ``make_dataset`` with its default arguments
    (pip install 'inflang[mnist1d]'); its official split, 4,000 training and 1,000 test signals. Each signal is
    a (1, 40) sequence: ``cnn`` convolves it in 1D, ``transformer`` reads its 40 steps as tokens, ``mlp``
    flattens it. Row ids are positions in make_dataset's output, training signals first."""

    name: Literal["mnist1d"]
    made_by: ClassVar[tuple[str, str] | None] = ("mnist1d", "pip install 'inflang[mnist1d]'")

    def info(self) -> DatasetInfo:
        return DatasetInfo(rows=5000, features=40, classes=10, test_rows=1000, shape=(1, 40))


class CustomDataset(DatasetBase, CodeFields):
    """The study's own data: ``loader`` (module:callable) is called with ``args`` and returns (x, y): arrays or
    tensors, x [n, ...] of features (images [n, channels, height, width]), y [n] of integer class labels (or
    float targets, [n] or [n, targets], for regression with the squared error). Row ids are positions in what
    it returns. ``inflang plan`` and ``run`` call it once to learn its sizes; ``validate`` only finds it."""

    name: Literal["custom"]
    loader: str = Field(description="module:callable returning (x, y), e.g. my_data:spirals")
    _facts: DatasetInfo | None = PrivateAttr(default=None)

    def info(self) -> DatasetInfo:
        return self._facts if self._facts is not None else UNKNOWN

    def with_facts(self, facts: DatasetInfo) -> CustomDataset:
        copy = self.model_copy()
        copy._facts = facts
        return copy


AnyDataset = BundledDataset | SyntheticDataset | FileDataset | ImageFolderDataset | Mnist1dDataset | CustomDataset
DatasetSpec = Annotated[AnyDataset, Field(discriminator="name")]
