"""Class-per-folder images (ImageNet-style subsets) decoded with Pillow; nothing is downloaded.

Row ids: the training images (by class, then file name), then the validation/test images if the folder has
an official split. Images are converted to RGB (or grayscale) and resized to ``image_size`` square.
"""

from __future__ import annotations

import numpy as np

from inflang.spec import ImageFolderDataset
from inflang.spec.dataset import scan_folder
from runners.data.split import RawData
from runners.errors import TaskFailure


def _read(path: str, spec: ImageFolderDataset) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            converted = image.convert("RGB" if spec.channels == 3 else "L")
            resized = converted.resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR)
            array = np.asarray(resized, dtype=np.float64) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise TaskFailure(f"{path}: not a readable image ({exc})") from None
    return array.transpose(2, 0, 1) if array.ndim == 3 else array[None]


def load_imagefolder(spec: ImageFolderDataset) -> RawData:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise TaskFailure("imagefolder decodes images with Pillow: pip install 'inflang[images]'") from None
    layout = scan_folder(spec.root)
    files = list(layout.train) + list(layout.test or ())
    if not files:
        raise TaskFailure(f"imagefolder: no images under {spec.root}")
    x = np.stack([_read(path, spec) for path, _ in files])
    y = np.array([label for _, label in files], dtype=np.int64)
    fixed = np.arange(len(layout.train), len(files)) if layout.test is not None else None
    return RawData(x=x, y=y, classes=len(layout.classes), fixed_test=fixed)
