"""Tests for leenet.defaults: the one place unset settings are filled in."""

from __future__ import annotations

import dataclasses

from leenet import DataConfig, GateConfig, ModelConfig, RunConfig, TrainConfig, resolve
from leenet.defaults import DATASET_DEFAULTS, dataset_defaults


def _unset(value) -> list[str]:
    """Names of the fields of a config tree that are still None."""
    if not dataclasses.is_dataclass(value):
        return []
    out = []
    for field in dataclasses.fields(value):
        inner = getattr(value, field.name)
        if inner is None:
            out.append(field.name)
        out += [f"{field.name}.{n}" for n in _unset(inner)]
    return out


def test_resolve_fills_every_setting_the_run_needs() -> None:
    for dataset in DATASET_DEFAULTS:
        config = resolve(RunConfig(data=DataConfig(dataset=dataset)))
        d = dataset_defaults(dataset)
        assert (config.model.arch, config.model.head, config.train.epochs) == (d.arch, d.head, d.epochs)
        assert config.model.exits and config.train.gates == d.gate_train and config.model.gate == d.gate
        # what may stay unset: no weights, the dataset's own class count and image size, its default place
        assert set(_unset(config)) <= {"out", "alpha", "target_cost", "max_drop", "data.data_dir",
                                       "data.image_size", "model.weights", "model.num_classes",
                                       "model.ensemble_final"}, dataset  # decided on calibration


def test_given_settings_win_and_weights_are_kept_as_they_are() -> None:
    config = resolve(RunConfig(model=ModelConfig(arch="small_resnet", head="pool", gate=GateConfig(hidden=4),
                                                 weights="w.pt"), train=TrainConfig(head_epochs=2)))
    assert (config.model.arch, config.model.head, config.model.gate.hidden) == ("small_resnet", "pool", 4)
    assert config.model.exits == ("layer1.0", "layer1", "layer2", "layer3.0")  # the backbone's own
    assert config.train.epochs == 0 and config.train.head_epochs == 2  # weights are used as they are
    transfer = resolve(RunConfig(model=ModelConfig(weights="w.pt", transfer=True)))
    assert transfer.train.epochs == DATASET_DEFAULTS["digits"].epochs  # the new classifier is trained


def test_unknown_datasets_take_the_folder_defaults_and_hub_copies_their_originals() -> None:
    assert dataset_defaults("hf:someone/something") is DATASET_DEFAULTS["folder"]
    assert dataset_defaults("hf:uoft-cs/cifar100") is DATASET_DEFAULTS["cifar100"]
    assert dataset_defaults("hf:uoft-cs/cifar10") is DATASET_DEFAULTS["cifar10"]
    assert dataset_defaults("hf-local:~/data/imagenette2:320px") is DATASET_DEFAULTS["imagenette"]
    assert dataset_defaults("hf:zalando-datasets/fashion_mnist") is DATASET_DEFAULTS["fashion-mnist"]


def test_a_fine_tune_fraction_becomes_whole_epochs_of_the_backbones_or_the_datasets() -> None:
    assert resolve(RunConfig()).train.finetune_epochs == 10  # a quarter of digits' 40
    assert resolve(RunConfig(train=TrainConfig(epochs=6, finetune_epochs=0.5))).train.finetune_epochs == 3
    assert resolve(RunConfig(train=TrainConfig(epochs=1, finetune_epochs=0.1))).train.finetune_epochs == 1  # at least one
    kept = resolve(RunConfig(model=ModelConfig(weights="w.pt"), train=TrainConfig(finetune_epochs=0.5)))
    assert kept.train.epochs == 0 and kept.train.finetune_epochs == DATASET_DEFAULTS["digits"].epochs // 2
    assert resolve(RunConfig(train=TrainConfig(finetune_epochs=7))).train.finetune_epochs == 7
