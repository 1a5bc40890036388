"""Fine-tuning the backbone with its exits (``--backbone-training joint``) or alone (``finetune``):
the weighted loss against a loop, the ramp, the epoch rule and its fallback, the training loop on
several backbone sources, and whole digits runs whose model.pt and export hold the fine-tuned backbone."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from leenet import (
    GateConfig,
    GateTrainConfig,
    LeenetError,
    RunConfig,
    TrainConfig,
    attach_exits,
    build_backbone,
    export_onnx,
    get_backbone_info,
    load_checkpoint,
    load_dataset,
    make_loader,
    run,
)
from leenet.finetune import (
    FINAL_EXIT_TOLERANCE,
    RAMP_DEPTH,
    RAMP_START,
    _ExitLosses,
    choose_epoch,
    finetune_backbone,
    ramp_weights,
    weighted_exit_loss,
)
from leenet.train import train_classifier, train_heads
from leenet_runtime import ExitRunner

from conftest import INPUT_SHAPE, NUM_CLASSES


def _loop_weighted_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, distill: float,
                        t: float) -> torch.Tensor:
    """The same loss exit by exit and sample by sample, from its definition."""
    total = torch.zeros((), dtype=torch.float64)
    b, e, _ = logits.shape
    for i in range(e):
        loss_i = torch.zeros((), dtype=torch.float64)
        for n in range(b):
            row = logits[n, i].double()
            hard = -row.log_softmax(-1)[y[n]]
            if i < e - 1 and distill > 0:
                p = (logits[n, -1].double() / t).softmax(-1)
                kl = (p * (p.log() - (row / t).log_softmax(-1))).sum()
                hard = (1 - distill) * hard + distill * t * t * kl
            loss_i += hard / b
        total += weights[i].double() * loss_i
    return total


@pytest.mark.parametrize("distill", [0.0, 0.5, 1.0])
def test_weighted_exit_loss_matches_a_loop(distill: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(9, 4, 6, generator=gen) * 3, torch.randint(0, 6, (9,), generator=gen)
    weights = torch.tensor([0.1, 0.4, 0.7, 1.0])
    got = weighted_exit_loss(logits, y, weights, distill, temperature=2.5)
    assert torch.allclose(got.double(), _loop_weighted_loss(logits, y, weights, distill, 2.5), atol=1e-5)


def test_the_final_exit_learns_from_the_labels_alone_the_teacher_out_of_the_graph() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 3, 5, generator=gen, requires_grad=True)
    y = torch.randint(0, 5, (8,), generator=gen)
    weighted_exit_loss(logits, y, torch.tensor([0.5, 0.0, 1.0]), distill=0.5).backward()
    assert logits.grad[:, 1].abs().max() == 0 and logits.grad[:, 0].abs().max() > 0, "weight 0: no gradient"
    expected = torch.autograd.grad(F.cross_entropy(logits[:, 2], y), logits)[0][:, 2]
    assert torch.allclose(logits.grad[:, 2], expected)


def test_ramp_rises_linearly_from_start_to_depth_weights() -> None:
    start, end, middle = ramp_weights(0.0, 5), ramp_weights(1.0, 5), ramp_weights(0.5, 5)
    assert torch.allclose(start, torch.tensor([RAMP_START] * 4 + [1.0]))
    assert torch.allclose(end, torch.tensor([RAMP_DEPTH * k / 4 for k in (1, 2, 3, 4)] + [1.0]))
    assert torch.allclose(middle, (start + end) / 2)
    assert torch.equal(ramp_weights(-1.0, 5), start) and torch.equal(ramp_weights(2.0, 5), end)
    assert torch.equal(ramp_weights(0.3, 1), torch.ones(1)), "the backbone alone: its final exit only"
    # SDN's six internal classifiers end at 0.15, 0.3, ..., 0.9
    assert torch.allclose(ramp_weights(1.0, 7)[:-1], torch.tensor([0.15, 0.3, 0.45, 0.6, 0.75, 0.9]))


def test_choose_epoch_keeps_the_best_early_exits_whose_final_exit_holds() -> None:
    final = torch.tensor([0.900, 0.899, 0.895, 0.905, 0.9001])
    early = torch.tensor([[0.5, 0.6], [0.7, 0.8], [0.9, 0.9], [0.6, 0.7], [0.7, 0.8]])
    choice = choose_epoch(final, early)
    # epoch 2 has the best early exits but its final exit lost 0.5 pt; epochs 1 and 4 tie: the first
    assert (choice.epoch, choice.fell_back) == (1, False)
    assert "epoch 1/4" in choice.message and "\n" not in choice.message
    assert choose_epoch(final, None).epoch == 3, "the backbone alone: the best final exit"
    assert choose_epoch(torch.tensor([0.9, 0.9 - FINAL_EXIT_TOLERANCE]), torch.tensor([[0.5], [0.6]])).epoch == 1, \
        "exactly 0.1 pt below qualifies"


def test_choose_epoch_falls_back_when_every_epoch_loses_the_final_exit() -> None:
    choice = choose_epoch(torch.tensor([0.95, 0.93, 0.948]), torch.tensor([[0.5], [0.9], [0.9]]))
    assert (choice.epoch, choice.fell_back) == (0, True)
    assert "no fine-tuned epoch kept the final exit within 0.1 pt of its 95.00 %" in choice.message
    assert "epoch 2/2" in choice.message and "before the fine-tune" in choice.message


def test_choose_epoch_keeps_the_network_as_it_was_unless_an_epoch_beats_it() -> None:
    final = torch.tensor([0.95, 0.95, 0.96], dtype=torch.float64)  # as a run measures them: float64 fractions
    early = torch.tensor([[0.80, 0.90], [0.80, 0.88], [0.85, 0.85]], dtype=torch.float64)  # means 0.85, 0.84, 0.85
    choice = choose_epoch(final, early)
    assert (choice.epoch, choice.fell_back) == (0, True), "a tie with the start keeps the start"
    assert "beat the mean early-exit accuracy before the fine-tune" in choice.message and "epoch 2/2" in choice.message
    assert choose_epoch(torch.tensor([0.95, 0.94, 0.95]), None).epoch == 0, "alone: no better final exit"


def _random_batches(shape: tuple[int, ...], classes: int, n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(16, *shape, generator=gen), torch.randint(0, classes, (16,), generator=gen))
            for _ in range(n)]
    return lambda: iter(data)


@pytest.mark.parametrize("arch", ["digits_cnn", "conftest:TinyCNN", *(pytest.param(name, marks=pytest.mark.slow)
                                                                      for name in ("tv:mobilenet_v3_small",
                                                                                   "timm:resnet18"))])
@pytest.mark.parametrize(("joint", "weighting"), [(True, "ramp"), (True, "equilibrium"), (False, "ramp")],
                         ids=["joint", "joint-equilibrium", "finetune"])
def test_finetune_trains_what_its_mode_says_and_ends_frozen_in_the_kept_epoch(arch: str, joint: bool,
                                                                              weighting: str) -> None:
    if arch.startswith("timm:"):
        pytest.importorskip("timm")  # the optional extra leenet[timm]
    shape = {"digits_cnn": (1, 8, 8), "conftest:TinyCNN": INPUT_SHAPE}.get(arch, (3, 32, 32))
    torch.manual_seed(0)
    backbone = build_backbone(arch, num_classes=NUM_CLASSES, in_channels=shape[0], image_size=shape[-1])
    net = attach_exits(backbone, list(get_backbone_info(arch).default_exits), input_shape=shape,
                       num_classes=NUM_CLASSES, head="pool", gate_config=GateConfig())
    batches = _random_batches(shape, NUM_CLASSES)
    train_heads(net, batches, steps_per_epoch=4, epochs=1, progress=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    record = finetune_backbone(net, batches, _random_batches(shape, NUM_CLASSES, seed=1), steps_per_epoch=4,
                               epochs=2, joint=joint, lr=1e-2, backbone_lr_scale=0.5, weighting=weighting,
                               progress=False)
    assert record["mode"] == ("joint" if joint else "finetune") and len(record["final_accuracy"]) == 3
    assert record["weighting"] == (weighting if joint else None)
    assert (record["early_accuracy"] is not None) == joint

    def moved(prefix: str) -> bool:
        return any(not torch.equal(before[k], v) for k, v in net.state_dict().items() if k.startswith(prefix))

    assert moved("stages.") == (record["chosen_epoch"] > 0)
    assert moved("heads.") == (joint and record["chosen_epoch"] > 0), "the control leaves the heads to be fitted after"
    assert not moved("gates.")
    assert not any(p.requires_grad for p in net.stages.parameters()) and not net.stages.training
    assert not net.heads.training


def test_a_fine_tune_that_ruins_the_final_exit_falls_back_to_the_network_as_it_was() -> None:
    splits = load_dataset("digits", calib_size=0.2, seed=0)
    loader, calib = make_loader(splits.train, 128, train=True), make_loader(splits.calib, 256, train=False)
    torch.manual_seed(0)
    backbone = build_backbone("digits_cnn", num_classes=10, in_channels=1)
    # trained first, so that the final exit has accuracy to lose
    train_classifier(backbone, lambda: iter(loader), steps_per_epoch=len(loader), epochs=3, progress=False)
    net = attach_exits(backbone, ["block1", "block2"], input_shape=(1, 8, 8), num_classes=10, head="pool")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lines = []
    record = finetune_backbone(net, lambda: iter(loader), lambda: iter(calib), steps_per_epoch=len(loader),
                               epochs=1, joint=True, lr=50.0, backbone_lr_scale=1.0, progress=False, log=lines.append)
    assert record["fell_back"] and record["chosen_epoch"] == 0
    assert record["final_accuracy"][1] < record["final_accuracy"][0] - FINAL_EXIT_TOLERANCE
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "every weight and statistic restored"
    assert len(lines) == 1 and lines[0].startswith("joint: no fine-tuned epoch kept the final exit")


# --- whole runs on digits -------------------------------------------------------------------------------------

def _config(out: Path, mode: str) -> RunConfig:
    train = TrainConfig(epochs=3, head_epochs=3, backbone_training=mode, finetune_epochs=2,
                        gates=GateTrainConfig(objective="hard", loss="ce", steps=30))
    return RunConfig(train=train, alphas=(0.0, 0.5, 1.0), timing=False, progress=False, out=str(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """The same seed's digits run frozen, fine-tuned alone and joint."""
    root = tmp_path_factory.mktemp("finetune")
    for mode in ("frozen", "finetune", "joint"):
        run(_config(root / mode, mode), log=lambda m: None)
    return {mode: (root / mode, json.loads((root / mode / "results.json").read_text()))
            for mode in ("frozen", "finetune", "joint")}


def _calib_accuracy(results: dict) -> list[float]:
    """Each single exit's calibration accuracy, as the run's policies record it."""
    return [p["calib"]["accuracy"] for p in results["policies"] if p["method"] == "single_exit"]


def test_both_fine_tunes_start_from_the_frozen_run_and_guard_the_final_exit(runs) -> None:
    frozen = _calib_accuracy(runs["frozen"][1])
    assert runs["frozen"][1]["backbone"]["training"] == {"epochs": 3, "lr": 0.05, "precision": "fp32",
                                                         "transfer": False, "mode": "frozen"}
    for mode in ("finetune", "joint"):
        tuned = runs[mode][1]["backbone"]["training"]["fine_tune"]
        assert tuned["mode"] == mode and tuned["epochs"] == 2 and len(tuned["final_accuracy"]) == 3
        assert math.isclose(tuned["final_accuracy"][0], frozen[-1]), "the same trained backbone before"
        kept = tuned["final_accuracy"][tuned["chosen_epoch"]]
        assert tuned["fell_back"] or kept >= tuned["final_accuracy"][0] - FINAL_EXIT_TOLERANCE - 1e-9
    joint = runs["joint"][1]["backbone"]["training"]["fine_tune"]
    assert joint["early_accuracy"][0] == pytest.approx(frozen[:-1]), "the heads fitted frozen, before"
    assert joint["chosen_epoch"] > 0, "on this seed the joint fine-tune keeps an epoch"
    assert {"finetune", "heads"} <= runs["joint"][1]["timings"].keys()


def test_model_pt_and_its_export_hold_the_fine_tuned_backbone(runs, tmp_path: Path) -> None:
    (joint_dir, results), (frozen_dir, _) = runs["joint"], runs["frozen"]
    tuned = results["backbone"]["training"]["fine_tune"]
    x, labels = next(iter(make_loader(load_dataset("digits", calib_size=0.2, seed=0).calib, 1000, train=False)))
    net, frozen = load_checkpoint(joint_dir / "model.pt"), load_checkpoint(frozen_dir / "model.pt")
    with torch.no_grad():
        final = net.forward_all(x).logits[:, -1]
        assert float((final.argmax(-1) == labels).double().mean()) == pytest.approx(
            tuned["final_accuracy"][tuned["chosen_epoch"]]), "the kept epoch's backbone, as measured"
        assert not torch.allclose(final, frozen.forward_all(x).logits[:, -1])
        routed, _ = net(x)
    runner = ExitRunner(export_onnx(joint_dir, tmp_path / "export").parent, providers=["CPUExecutionProvider"])
    onnx_logits, _ = runner(x.numpy())
    assert torch.allclose(torch.from_numpy(onnx_logits), routed, atol=1e-4)


def test_the_mode_is_validated_in_one_line() -> None:
    with pytest.raises(LeenetError, match=r"unknown --backbone-training 'joined' \(valid: frozen, finetune, joint\)"):
        TrainConfig(backbone_training="joined")
    with pytest.raises(LeenetError, match="whole number"):
        dataclasses.replace(TrainConfig(), finetune_epochs=1.5)
    with pytest.raises(LeenetError, match=r"in \(0, 1\]"):
        TrainConfig(backbone_lr_scale=2.0)
    with pytest.raises(LeenetError, match=r"unknown --joint-weighting 'imta' \(valid: ramp, equilibrium\)"):
        TrainConfig(joint_weighting="imta")


def test_gradient_equilibrium_gives_each_stage_the_mean_of_its_exits_gradients() -> None:
    torch.manual_seed(0)
    net = attach_exits(build_backbone("conftest:TinyCNN", num_classes=NUM_CLASSES, image_size=16),
                       ["block1", "block2", "block3"], input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, head="pool")
    x, y = torch.randn(8, *INPUT_SHAPE), torch.randint(0, NUM_CLASSES, (8,))
    stages = [list(stage.parameters()) for stage in net.stages]
    num_exits = len(net.stages)
    # the reference: each exit's loss alone, its gradient on every stage; stage i averages the exits j >= i
    plain = _ExitLosses(net, joint=True, distill=0.0, temperature=1.0)
    per_exit = []
    for j in range(num_exits):
        loss = F.cross_entropy(plain.exit_logits(x)[:, j], y)
        grads = iter(torch.autograd.grad(loss, [p for params in stages for p in params], allow_unused=True))
        per_exit.append([[next(grads) for _ in params] for params in stages])
    balanced = _ExitLosses(net, joint=True, distill=0.0, temperature=1.0, equilibrium=True)
    assert torch.equal(balanced.weights(0.0), torch.ones(num_exits)) and torch.equal(
        balanced.exit_logits(x), plain.exit_logits(x)), "the forward is unchanged"
    net.zero_grad()
    balanced(x, y, balanced.weights(0.0)).backward()
    for i, params in enumerate(stages):
        for k, p in enumerate(params):
            mean = sum(per_exit[j][i][k] for j in range(i, num_exits) if per_exit[j][i][k] is not None) / (num_exits - i)
            assert torch.allclose(p.grad, mean, atol=1e-6), (i, k)
