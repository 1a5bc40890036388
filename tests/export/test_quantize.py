"""int8 export: stage graphs quantized on what runs before them, the threshold refit, the same runner.

One int8 export of a digits-sized network with random gates that mix the exits (module fixture,
a few seconds) serves most tests; the refit rule is checked against a brute-force loop.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from test_export_linked import linked_net
from test_predict_files import make_digits_run, write_digit_pngs

from leenet import LeenetError, load_checkpoint, load_dataset, make_loader
from leenet.cli import main as leenet_main
from leenet.export import LabeledImages, QuantizeOptions, SavedPolicy, export_int8, export_onnx, read_report
from leenet.export import quantize as quantize_module
from leenet.export.refit import refit_threshold
from leenet.policy.objective import exit_losses
from leenet.policy.thresholds import BUDGET_TIE, SHARED_LEVELS
from leenet.predict import predict_files
from leenet_runtime import ExitRunner, ExportError, read_manifest
from leenet_runtime import manifest as manifest_module
from leenet_runtime.cli import main as runtime_main
from leenet_runtime.manifest import MANIFEST_NAME, version_for
from leenet_runtime.scheduler import BatchingConfig, Scheduler

POLICY = SavedPolicy(alpha=0.5, loss="error", threshold=0.5)
V1_KEYS = ["format", "version", "leenet_version", "opset", "input_shape", "dtype", "preprocessing", "class_names",
           "threshold", "gate_history", "backbone_flops", "exits", "files"]  # a float32 export's, as before int8


def _split(ds) -> LabeledImages:
    x, y = next(iter(make_loader(ds, len(ds), train=False)))
    return LabeledImages(x.numpy(), y.numpy())


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    """A digits network with mixed exits (model.pt), its float32 and int8 exports, and digit PNGs."""
    root = tmp_path_factory.mktemp("int8")
    make_digits_run(root / "run")
    splits = load_dataset("digits")
    calib, test = _split(splits.calib), _split(splits.test)
    export_onnx(root / "run", root / "float32")
    export_int8(root / "run", root / "int8", calib=calib, test=test, policy=POLICY)
    files, x = write_digit_pngs(root / "images", 40)
    return {"root": root, "run": root / "run", "float32": root / "float32", "int8": root / "int8", "calib": calib,
            "test": test, "files": files, "x": x}


def test_int8_export_runs_in_the_same_runner(digits) -> None:
    manifest = read_manifest(digits["int8"])
    assert manifest.version == 3 and manifest.precision == "int8" and manifest.dtype == "float32"
    q = manifest.quantization
    assert (q.format, q.activations, q.method, q.quantized) == ("QDQ", "uint8", "minmax", "backbone+heads")
    assert q.calibration_images == q.refit_images == len(digits["calib"].labels)
    runner, float_runner = ExitRunner(digits["int8"]), ExitRunner(digits["float32"])
    assert runner.exit_names == float_runner.exit_names and runner.class_names == float_runner.class_names
    x = digits["test"].images[:64]
    logits, exit_index = runner(x)
    assert logits.shape == (64, 10) and logits.dtype == np.float32 and set(exit_index) <= {0, 1, 2}
    all_logits, exit_prob = runner.all_exits(x)
    assert all_logits.shape == (64, 3, 10) and exit_prob.shape == (64, 2)
    rows = np.arange(64)
    np.testing.assert_array_equal(all_logits[rows, exit_index].argmax(1), logits.argmax(1))


@pytest.mark.parametrize("part", ["backbone+heads", "backbone"])
def test_backbone_and_heads_are_int8_and_gates_float32(digits, part: str, tmp_path) -> None:
    export = digits["int8"]
    if part == "backbone":
        export = tmp_path / "int8"
        export_int8(digits["run"], export, calib=digits["calib"], test=digits["test"], policy=POLICY,
                    options=QuantizeOptions(quantize=part))
    entries = read_manifest(export).exits
    for i, entry in enumerate(entries):
        graph = onnx.load(str(export / entry.graph)).graph
        quantized = {name for n in graph.node if n.op_type == "DequantizeLinear" for name in n.output}
        layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        int8 = (f"/stages.{i}/", f"/heads.{i}/") if part == "backbone+heads" else (f"/stages.{i}/",)
        inside = [n for n in layers if n.name.startswith(int8)]
        outside = [n for n in layers if not n.name.startswith(int8)]
        assert inside and all(n.input[0] in quantized for n in inside), entry.graph
        assert outside or i == len(entries) - 1  # the gates' (and the float32 heads') layers
        assert not any(n.input[0] in quantized for n in outside), entry.graph


def test_every_exit_agrees_with_float32(digits) -> None:
    report = read_report(digits["int8"])
    for split in (report.calibration, report.test):
        for exit_ in split.exits:
            assert exit_.same_class >= 0.97, exit_
            assert abs(exit_.int8_accuracy - exit_.float32_accuracy) <= 0.02, exit_
        assert split.same_exit_before_refit >= 0.95  # the gates of this random network move its exits, not int8
    calib = report.calibration
    assert calib.int8_after_refit.cost <= calib.float32.cost * (1 + 1e-6)  # the refit spends what float32 did
    assert calib.int8_after_refit.accuracy >= calib.int8_before_refit.accuracy - 0.005  # ... at least as well
    assert report.routed_matches


def test_report_float32_figures_are_the_float32_export(digits) -> None:
    runner = ExitRunner(digits["float32"])
    logits, exit_index = runner(digits["test"].images)
    figures = read_report(digits["int8"]).test.float32
    assert figures.accuracy == pytest.approx(float((logits.argmax(1) == digits["test"].labels).mean()))
    assert figures.cost == pytest.approx(float(runner.costs[exit_index].mean()))


@pytest.mark.parametrize("links", ["cascade+ensemble", "ensemble-early"])
def test_linked_exits_quantize_and_route(links: str, tmp_path) -> None:
    net, x = linked_net(links, history=True)
    with torch.no_grad():
        labels = net.forward_all(x).logits[:, -1].argmax(1).numpy()  # what the float32 network says
    data = LabeledImages(x.numpy(), labels)
    export_int8(net, tmp_path / "int8", calib=data, test=data, policy=POLICY)
    manifest = read_manifest(tmp_path / "int8")
    assert manifest.linked and manifest.version == 3 and manifest.precision == "int8"
    report = read_report(tmp_path / "int8")
    assert report.routed_matches
    assert all(e.same_class >= 0.9 for e in report.test.exits if e.same_class is not None), report.test.exits


def test_predict_engines_read_the_int8_export(digits, capsys) -> None:
    records = list(predict_files(digits["int8"], digits["files"], engine="onnx", batch_size=16))
    logits, exit_index = ExitRunner(digits["int8"])(digits["x"].numpy())
    assert [r["class_index"] for r in records] == logits.argmax(1).tolist()
    assert [r["exit_index"] for r in records] == exit_index.tolist()
    assert runtime_main(["predict", str(digits["int8"]), str(digits["files"][0]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exit_index"] == exit_index[0]


@pytest.mark.parametrize("mode", ["stage", "request"])
def test_the_server_scheduler_serves_the_int8_export(digits, mode: str) -> None:
    runner = ExitRunner(digits["int8"])
    x = digits["test"].images[:48]
    with Scheduler(runner, BatchingConfig(mode=mode, max_batch=16, max_delay_ms=1)) as scheduler:
        served = [scheduler(x[i:i + 1], timeout=30) for i in range(len(x))]
    logits, exit_index = runner(x)
    np.testing.assert_array_equal(np.concatenate([s[1] for s in served]), exit_index)
    np.testing.assert_array_equal(np.concatenate([s[0] for s in served]).argmax(1), logits.argmax(1))


def _brute_force_threshold(logits, exit_prob, labels, costs, loss, spent, saved) -> float:
    """refit_threshold's rule, a sample at a time: the shared level of least mean loss within the float32
    cost (ties within BUDGET_TIE to the dearest), unless the saved threshold is as good within 1.5
    paired standard errors of cost."""
    losses = exit_losses(torch.from_numpy(logits), torch.from_numpy(labels), loss).numpy()
    scores = (np.log(exit_prob.astype(np.float64)) - np.log1p(-exit_prob.astype(np.float64))).astype(np.float32)
    max_cost = float(np.mean(spent))

    def route(level: float) -> tuple[float, list[float]]:
        total_loss, paid = 0.0, []
        for s, row_loss in zip(scores, losses):
            k = next((i for i, v in enumerate(s) if v >= level), len(costs) - 1)
            total_loss += row_loss[k]
            paid.append(costs[k])
        return total_loss / len(labels), paid

    found = []
    for level in [-math.inf, *SHARED_LEVELS.tolist()]:
        mean_loss, paid = route(level)
        found.append((level, mean_loss, float(np.float32(np.mean(np.asarray(paid, np.float32))))))
    fits = [f for f in found if f[2] <= max_cost * (1 + 1e-6)]
    least = min(f[1] for f in fits)
    best = max((f for f in fits if f[1] <= least + BUDGET_TIE + 1e-12), key=lambda f: f[2])
    kept_loss, paid = route(math.log(saved / (1 - saved)))
    d = np.asarray(paid) - np.asarray(spent)
    slack = 1.5 * math.sqrt(d.var() / len(d))
    if kept_loss <= best[1] + BUDGET_TIE + 1e-12 and np.mean(paid) <= max_cost * (1 + 1e-6) + slack:
        return saved
    return 0.0 if best[0] == -math.inf else 1 / (1 + math.exp(-best[0]))


@pytest.mark.parametrize("seed", range(4))
def test_refit_threshold_matches_a_brute_force_search(seed: int) -> None:
    gen = np.random.default_rng(seed)
    n, e, k = 300, 3, 4
    logits = gen.normal(size=(n, e, k)).astype(np.float32)
    labels = gen.integers(0, k, n)
    logits[np.arange(n), :, labels] += np.array([0.5, 1.0, 2.0], np.float32)  # later exits more accurate
    exit_prob = (1 / (1 + np.exp(-gen.normal(0, 3, size=(n, e - 1))))).astype(np.float32)
    costs = [0.2, 0.5, 1.02]
    kept = 0
    for max_cost, saved in ((0.5, 0.5), (0.3, 0.9), (0.8, 0.2), (0.45, 0.5)):
        spent = np.asarray(costs)[gen.choice(3, n, p=[0.5, 0.2, 0.3])]  # a float32 policy's costs ...
        spent *= max_cost / spent.mean()  # ... spending max_cost on average
        got = refit_threshold(logits, exit_prob, labels, costs, "error", spent, saved)
        want = _brute_force_threshold(logits, exit_prob, labels, costs, "error", spent, saved)
        assert got == pytest.approx(want, rel=1e-6), (seed, max_cost, saved)
        kept += got == saved
    assert kept < 4  # the search chose something else at least once


def test_refit_keeps_the_saved_threshold_when_nothing_moved(digits) -> None:
    calib = digits["calib"]
    logits, exit_prob = ExitRunner(digits["float32"]).all_exits(calib.images)
    costs = [e.cost for e in read_manifest(digits["float32"]).exits]
    spent = np.array(costs)[np.where(exit_prob[:, 0] >= 0.5, 0, np.where(exit_prob[:, 1] >= 0.5, 1, 2))]
    assert refit_threshold(logits, exit_prob, calib.labels, costs, "error", spent, 0.5) == 0.5


def test_manifest_versions_come_from_one_table(digits) -> None:
    assert version_for(linked=False, final_heads=False) == 1
    assert version_for(linked=True, final_heads=False) == 2
    assert version_for(linked=False, precision="int8") == 3
    float32 = json.loads((digits["float32"] / MANIFEST_NAME).read_text())
    assert list(float32) == V1_KEYS and float32["version"] == 1  # float32 exports written as before
    int8 = json.loads((digits["int8"] / MANIFEST_NAME).read_text())
    assert list(int8) == [*V1_KEYS, "linked", "final_heads", "precision", "quantization"]


def test_an_older_runtime_refuses_an_int8_export_in_one_line(digits, monkeypatch) -> None:
    monkeypatch.setattr(manifest_module, "READ_VERSIONS", (1, 2))  # a runtime from before int8
    read_manifest(digits["float32"])  # reads what it always read
    with pytest.raises(ExportError, match="manifest version 3, this runtime reads versions 1, 2") as err:
        ExitRunner(digits["int8"])
    assert "\n" not in str(err.value)


def test_a_damaged_int8_manifest_is_refused(digits, tmp_path) -> None:
    raw = json.loads((digits["int8"] / MANIFEST_NAME).read_text())
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({k: v for k, v in raw.items() if k != "quantization"}))
    with pytest.raises(ExportError, match="lacks quantization"):
        read_manifest(tmp_path, verify=False)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**raw, "version": 1}))
    with pytest.raises(ExportError, match="version 1 manifest cannot describe int8 graphs"):
        read_manifest(tmp_path, verify=False)


def test_an_existing_out_is_refused_and_kept(digits) -> None:
    before = {p.name: p.read_bytes() for p in digits["float32"].iterdir()}
    with pytest.raises(LeenetError, match="already exists: pass a new directory"):
        export_int8(digits["run"], digits["float32"], calib=digits["calib"], test=digits["test"], policy=POLICY)
    assert {p.name: p.read_bytes() for p in digits["float32"].iterdir()} == before


def test_a_run_without_model_is_one_line(tmp_path, capsys) -> None:
    assert leenet_main(["export", str(tmp_path), "--out", str(tmp_path / "out"), "--int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no model.pt" in err and not (tmp_path / "out").exists()


def test_too_few_calibration_images_are_refused(digits, tmp_path) -> None:
    few = LabeledImages(digits["calib"].images[:150], digits["calib"].labels[:150])
    with pytest.raises(LeenetError, match="150 calibration images are too few to quantize"):
        export_int8(digits["run"], tmp_path / "out", calib=few, test=digits["test"], policy=POLICY)
    with pytest.raises(LeenetError, match="--calib-images 50 is too few"):
        QuantizeOptions(calib_images=50)
    assert list(tmp_path.iterdir()) == []


def test_a_graph_that_does_not_quantize_leaves_nothing(digits, tmp_path, monkeypatch) -> None:
    def unsupported(*args, **kwargs):  # what the quantizer raises for an operator it cannot handle
        raise NotImplementedError("Could not find an implementation for ConvInteger(10) node with name 'x'")

    monkeypatch.setattr(quantize_module, "quantize_static", unsupported)
    with pytest.raises(LeenetError, match="stage0.onnx does not quantize to int8") as err:
        export_int8(digits["run"], tmp_path / "out", calib=digits["calib"], test=digits["test"], policy=POLICY)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the export nor its working directory


@pytest.mark.slow
def test_cli_int8_export_of_a_real_run(tmp_path, capsys) -> None:
    """`leenet export RUN --int8` on a finished digits run: its own splits and saved alpha, end to end."""
    assert leenet_main(["run", "--out", str(tmp_path / "run"), "--quiet", "--no-timing"]) == 0
    capsys.readouterr()
    assert leenet_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "int8"), "--int8"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "int8" / MANIFEST_NAME)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    report = read_report(tmp_path / "int8")
    assert report.test.float32.accuracy == pytest.approx(results["selected"]["accuracy"], abs=1e-6)
    assert report.test.float32.cost == pytest.approx(results["selected"]["cost"], rel=1e-5)
    assert report.calibration.images == results["dataset_info"]["num_calib"]
    assert abs(report.test.int8_after_refit.accuracy - report.test.float32.accuracy) <= 0.01
    net = load_checkpoint(tmp_path / "run" / "model.pt")
    assert net.num_exits == len(report.test.exits)
