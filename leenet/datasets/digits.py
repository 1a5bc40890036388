"""scikit-learn's embedded 8x8 digits: the dataset that needs no files and no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from leenet.datasets.memory import ArrayData, Augment
from leenet.errors import DataError

TEST_FRACTION = 0.2  # digits has no official test split: a fixed stratified fifth plays it
TEST_SEED = 0  # fixed, independent of the run's seed, so the test set never moves
MEAN = (0.3053,)  # pixel statistics of all 1797 images scaled to [0, 1]
STD = (0.3760,)


def read_digits(data_dir: Path | None = None, download: bool = False) -> ArrayData:
    """Load the 1797 digits (values 0..16) with a fixed stratified 20 % test split.

    Args:
        data_dir: must be None: the data ships with scikit-learn (a folder given here would
            be ignored, so it is refused rather than silently unused).
        download: ignored (nothing to download).

    Returns:
        The train (1437) and test (360) images, uint8 ``(N, 1, 8, 8)`` with
        ``value_max=16``. Augmentation is a ±1 px shift only: digits are not mirror-invariant.
    """
    if data_dir is not None:
        raise DataError(f"digits ships inside scikit-learn and reads no files, so --data-dir {data_dir} would be "
                        "ignored: drop it, or pick a dataset that reads one (fashion-mnist, cifar10, cifar100, "
                        "imagenette, folder)")
    from sklearn.datasets import load_digits  # scikit-learn (1-2 s to import) for this dataset alone
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.uint8)[:, None]  # (N, 1, 8, 8), 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=TEST_SEED, stratify=labels
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return ArrayData(
        train_x=torch.from_numpy(images[train_idx]),
        train_y=torch.from_numpy(labels[train_idx]),
        test_x=torch.from_numpy(images[test_idx]),
        test_y=torch.from_numpy(labels[test_idx]),
        class_names=tuple(str(int(t)) for t in bunch.target_names),
        mean=MEAN,
        std=STD,
        augment=Augment(pad=1, flip=False),
        value_max=16.0,
    )
