"""What an export needs to know besides the network: preprocessing and class names of a run."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from leenet.checkpoint import load_checkpoint, read_checkpoint
from leenet.data import Splits, TensorImageDataset, load_dataset, make_loader
from leenet.datasets.folder import eval_resize
from leenet.errors import LeenetError, brief
from leenet.nn.model import ExitNet
from leenet_runtime.manifest import Preprocessing


def default_preprocessing(input_shape: Sequence[int]) -> Preprocessing:
    """Stretch to the network's size, 8-bit pixels scaled to [0, 1], no normalization."""
    channels, height, width = (int(n) for n in input_shape)
    return Preprocessing(image_size=(height, width), resize="stretch", resize_size=0,
                         color="L" if channels == 1 else "RGB", channels=channels, value_max=255.0,
                         mean=(0.0,) * channels, std=(1.0,) * channels)


def run_metadata(spec: Mapping, run_dir: Path) -> tuple[Preprocessing, tuple[str, ...]]:
    """The preprocessing and class names of the run whose checkpoint ``spec`` this is.

    The dataset is loaded once (from the run's ``config.json`` data directory) for what the
    checkpoint does not hold: its class names, native colour and resizing.

    Raises:
        LeenetError: the checkpoint names no dataset or the dataset cannot be read.
    """
    if "dataset" not in spec:
        raise LeenetError(f"the checkpoint in {run_dir} names no dataset: export the network with "
                          "export_onnx(net, ..., class_names=..., preprocessing=...)")
    if "preprocessing" in spec and "class_names" in spec:  # runs since the checkpoint records them
        return Preprocessing.from_dict(spec["preprocessing"]), tuple(spec["class_names"])
    name = spec["dataset"]
    try:
        splits = load_dataset(name, data_dir=_data_dir(run_dir))
    except LeenetError as exc:
        raise LeenetError(f"the class names and image colour of {name} come from its files, which could not be "
                          f"read ({brief(exc)}): make the data available, or pass class_names= and "
                          "preprocessing=") from None
    return preprocessing_of(splits, spec["input_shape"], spec["mean"], spec["std"]), tuple(splits.spec.class_names)


def preprocessing_of(splits: Splits, input_shape: Sequence[int], mean: Sequence[float],
                     std: Sequence[float]) -> Preprocessing:
    """How an image file becomes an input exactly like the test images of ``splits``.

    ``value_max`` describes the files, not the dataset: an 8-bit file's 255 maps to 1.0, as the
    dataset's own full scale does in training (16 for digits, whose 0..16 the in-memory
    dataset divides by 16), so a file's 0..255 maps linearly onto the dataset's range.
    """
    channels, height, width = (int(n) for n in input_shape)
    common = {"image_size": (height, width), "channels": channels, "value_max": 255.0,
              "mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std)}
    test = splits.test
    if isinstance(test, TensorImageDataset):  # stored arrays, resized as whole batches (leenet.datasets.memory)
        color = "L" if test.images.shape[1] == 1 else "RGB"
        return Preprocessing(resize="stretch", resize_size=0, color=color, **common)
    # image files, torchvision's eval transform (leenet.datasets.folder.build_transform)
    return Preprocessing(resize="shorter-side-crop", resize_size=eval_resize(height), color="RGB", **common)


def _data_dir(run_dir: Path) -> Path | None:
    """The data directory the run read, from its ``config.json`` (None: the dataset's default)."""
    config = run_dir / "config.json"
    if not config.is_file():
        return None
    data_dir = _config(run_dir)["data"]["data_dir"]
    return Path(data_dir).expanduser() if data_dir is not None else None


def _config(run_dir: Path) -> dict:
    """The run's ``config.json`` (the request as given), with the keys the data splits need."""
    config = run_dir / "config.json"
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise LeenetError(f"{config} is unreadable ({brief(exc)}): restore it from the run") from None
    if not (isinstance(raw, dict) and "seed" in raw and isinstance(raw.get("data"), dict)
            and {"data_dir", "calib_size"} <= raw["data"].keys()):
        raise LeenetError(f"{config} lacks data.data_dir, data.calib_size or seed: restore it from the run")
    return raw


def run_splits(run_dir: str | Path) -> Splits:
    """The train / calibration / test splits of a finished run, rebuilt as the run made them.

    The dataset, image size, channels and normalization come from the checkpoint; the data
    directory, calibration size and seed (which images were held out) from ``config.json``.

    Raises:
        LeenetError: no ``model.pt`` or ``config.json``, or the dataset's files cannot be read.
    """
    run_dir = Path(run_dir)
    model = run_dir / "model.pt"
    if not model.is_file() or not (run_dir / "config.json").is_file():
        raise LeenetError(f"{run_dir} has no model.pt and config.json: pass the directory of a finished `leenet run`")
    spec, config = read_checkpoint(model)["spec"], _config(run_dir)
    calib = config["data"]["calib_size"]
    channels, _, size = (int(n) for n in spec["input_shape"])
    try:
        return load_dataset(spec["dataset"], data_dir=_data_dir(run_dir), calib_size=int(calib) if calib >= 1 else calib,
                            seed=int(config["seed"]), image_size=size, channels=channels, mean=spec["mean"],
                            std=spec["std"])
    except LeenetError as exc:
        raise LeenetError(f"the run's data ({spec['dataset']}) cannot be read ({brief(exc)}): make it available "
                          "where the run read it (config.json's data_dir)") from None


def split_arrays(ds, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A split's images (N, C, H, W) float32, as the network reads them, and labels (N,) int64."""
    xs, ys = zip(*make_loader(ds, batch_size, train=False))
    return torch.cat(xs).float().numpy(), torch.cat(ys).numpy()


def load_run(source: str | Path, *, map_location: str | torch.device = "cpu",
             ) -> tuple[ExitNet, Preprocessing, tuple[str, ...]]:
    """A finished run's network, the preprocessing of its images and its class names.

    Args:
        source: a run directory or its ``model.pt``.

    Raises:
        LeenetError: no ``model.pt`` there, or it (or the data it names) cannot be read.
    """
    source = Path(source)
    model = source / "model.pt" if source.is_dir() else source
    if not model.is_file():
        raise LeenetError(f"{source} has no model.pt: pass the directory of a finished `leenet run` "
                          "(or its model.pt)")
    prep, class_names = run_metadata(read_checkpoint(model)["spec"], model.parent)
    return load_checkpoint(model, map_location=map_location), prep, class_names
