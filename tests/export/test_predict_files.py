"""Prediction on image files: torch engine (run dir) and onnx engine (export) give the same records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from leenet import (
    GateConfig,
    LeenetError,
    attach_exits,
    build_backbone,
    load_checkpoint,
    load_dataset,
    make_loader,
    save_checkpoint,
)
from leenet.cli import main as leenet_main
from leenet.data import TensorImageDataset
from leenet.export import export_onnx
from leenet.predict import predict_files
from leenet_runtime import ExitRunner, ExportError
from leenet_runtime.cli import main
from leenet_runtime.predict import RECORD_KEYS

from conftest import assert_routes_like, mix_exits_, randomize_batchnorm_

EXITS = ["block1", "block2"]


def make_digits_run(run: Path, *, history: bool = True) -> None:
    """Write a digits run directory (model.pt only) whose random gates mix the test images' exits."""
    splits = load_dataset("digits")
    x, _ = next(iter(make_loader(splits.test, len(splits.test), train=False)))
    torch.manual_seed(0)
    backbone = randomize_batchnorm_(build_backbone("digits_cnn", num_classes=10, in_channels=1))
    net = attach_exits(backbone, EXITS, input_shape=(1, 8, 8), num_classes=10, head="flatten",
                       gate_config=GateConfig(history=history)).eval()
    mix_exits_(net, x, 0.5)
    run.mkdir(parents=True, exist_ok=True)
    spec = {"arch": "digits_cnn", "exits": EXITS, "num_classes": 10, "input_shape": [1, 8, 8], "head": "flatten",
            "gate": dict(vars(net.gate_config)), "threshold": net.threshold, "dataset": "digits",
            "mean": list(splits.spec.mean), "std": list(splits.spec.std)}
    save_checkpoint(run / "model.pt", net, spec)


def to_8bit(values: np.ndarray) -> np.ndarray:
    """The digits' 0..16 as an ordinary 8-bit image's 0..255 (linear, rounded)."""
    return np.round(values.astype(np.float64) * 255 / 16).astype(np.uint8)


def write_digit_pngs(folder: Path, count: int) -> tuple[list[Path], torch.Tensor]:
    """The first ``count`` digits test images as ordinary 8-bit grey PNGs (0..255).

    Returns:
        The files, and the network inputs (count, 1, 8, 8) the pipeline makes of those 8-bit
        pixels (a dataset of them with ``value_max=255``).
    """
    splits = load_dataset("digits")
    pixels = to_8bit(splits.test.images[:count].numpy())  # (count, 1, 8, 8)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"digit{i:03d}.png" for i in range(count)]
    for path, img in zip(paths, pixels):
        Image.fromarray(img[0], mode="L").save(path)
    ds = TensorImageDataset(torch.from_numpy(pixels), torch.zeros(count, dtype=torch.long),
                            mean=splits.spec.mean, std=splits.spec.std, value_max=255.0)
    return paths, ds.batch(list(range(count)))[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("digits")
    make_digits_run(root / "run")
    export_onnx(root / "run", root / "export")
    files, x = write_digit_pngs(root / "images", 40)
    return {"run": root / "run", "export": root / "export", "x": x, "files": files}


def test_export_of_a_run_records_its_preprocessing(digits) -> None:
    manifest = json.loads((digits["export"] / "manifest.json").read_text())
    prep = manifest["preprocessing"]
    assert prep["value_max"] == 255.0 and prep["color"] == "L" and prep["resize"] == "stretch"
    assert prep["image_size"] == [8, 8] and prep["mean"] == [pytest.approx(0.3053)]
    assert manifest["class_names"] == [str(k) for k in range(10)]


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_torch_engine_reproduces_the_network_on_files(digits, batch_size: int) -> None:
    net = load_checkpoint(digits["run"] / "model.pt")
    with torch.no_grad():
        reference = net.forward_all(digits["x"])
    records = list(predict_files(digits["run"], [digits["files"][0].parent], batch_size=batch_size))
    assert [r["file"] for r in records] == [str(p) for p in digits["files"]]
    assert_routes_like(reference, net.threshold, [r["exit_index"] for r in records],
                       np.array([r["class_index"] for r in records]))
    assert len({r["exit"] for r in records}) >= 2, "the gates should mix the exits"
    assert all(set(r) == set(RECORD_KEYS) for r in records)


def test_onnx_engine_gives_the_torch_records(digits) -> None:
    torch_records = list(predict_files(digits["run"], digits["files"], batch_size=16))
    onnx_records = list(predict_files(digits["export"], digits["files"], engine="onnx", batch_size=16))
    net = load_checkpoint(digits["run"] / "model.pt")
    with torch.no_grad():
        reference = net.forward_all(digits["x"])
    for records in (torch_records, onnx_records):
        assert_routes_like(reference, net.threshold, [r["exit_index"] for r in records],
                           np.array([r["class_index"] for r in records]))
    for want, got in zip(torch_records, onnx_records, strict=True):
        if got["exit_index"] == want["exit_index"]:  # else a tie at the threshold, which either engine may take
            assert {k: got[k] for k in RECORD_KEYS if k != "confidence"} == {
                k: want[k] for k in RECORD_KEYS if k != "confidence"}
            assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)


def test_runtime_cli_prints_json_and_reports_unreadable_files(digits, tmp_path, capsys) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    code = main(["predict", str(digits["export"]), str(digits["files"][0]), str(bad), str(digits["files"][1]),
                 "--json", "--batch-size", "2"])
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [r["file"] for r in lines] == [str(digits["files"][0]), str(digits["files"][1])]
    assert all(set(r) == set(RECORD_KEYS) for r in lines)
    assert err.count("\n") == 1 and "cannot read image" in err and "notes.png" in err


def test_value_max_reads_files_of_another_range(digits, tmp_path, capsys) -> None:
    raw = load_dataset("digits").test.images[3, 0].numpy()  # 0..16
    paths = {"raw": tmp_path / "raw.png", "x15": tmp_path / "x15.png"}
    Image.fromarray(raw.astype(np.uint8), mode="L").save(paths["raw"])
    Image.fromarray((raw * 15).astype(np.uint8), mode="L").save(paths["x15"])  # 0..240
    main(["predict", str(digits["export"]), str(paths["raw"]), "--json", "--value-max", "16"])
    main(["predict", str(digits["export"]), str(paths["x15"]), "--json", "--value-max", "240"])
    main(["predict", str(digits["export"]), str(paths["raw"]), "--json"])  # read as 0..255: nearly black
    raw16, x15, dark = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    net = load_checkpoint(digits["run"] / "model.pt")
    x, _ = next(iter(make_loader(load_dataset("digits").test, 4, train=False)))  # exact 0..16 / 16
    with torch.no_grad():
        reference = net.forward_all(x[3:4])
    for got in (raw16, x15):
        assert_routes_like(reference, net.threshold, [got["exit_index"]], np.array([got["class_index"]]))
        assert got["confidence"] == pytest.approx(x15["confidence"], abs=1e-5)
    assert dark["confidence"] != pytest.approx(raw16["confidence"], abs=1e-3)


def test_16bit_files_use_their_full_scale(digits, tmp_path, capsys) -> None:
    pixels = np.asarray(Image.open(digits["files"][5]))
    wide = tmp_path / "wide.png"
    Image.fromarray(pixels.astype(np.uint16) * 257).save(wide)  # 0..65535, the same brightness
    assert Image.open(wide).mode.startswith("I;16")
    main(["predict", str(digits["export"]), str(digits["files"][5]), str(wide), "--json"])
    want, got = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (got["class_index"], got["exit_index"]) == (want["class_index"], want["exit_index"])
    assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)


def test_runtime_cli_text_output(digits, capsys) -> None:
    assert main(["predict", str(digits["export"]), str(digits["files"][0]), "--threads", "1"]) == 0
    file, name, confidence, exit_name, cost = capsys.readouterr().out.strip().split("\t")
    assert file == str(digits["files"][0]) and name in [str(k) for k in range(10)]
    assert 0 < float(confidence) <= 1 and exit_name.startswith("exit ") and cost.startswith("cost ")


def test_engine_and_model_kind_mismatch_is_refused(digits, tmp_path) -> None:
    with pytest.raises(LeenetError, match="not an export"):
        list(predict_files(digits["run"], digits["files"], engine="onnx"))
    with pytest.raises(LeenetError, match="is an ONNX export"):
        list(predict_files(digits["export"], digits["files"]))
    with pytest.raises(LeenetError, match="has no model.pt") as err:
        list(predict_files(tmp_path, digits["files"]))
    assert "\n" not in str(err.value)
    with pytest.raises(LeenetError, match="unknown engine"):
        list(predict_files(digits["run"], digits["files"], engine="tensorrt"))


def _leenet(args: list[str], capsys) -> tuple[int, str, str]:
    """`leenet ARGS...`: exit status, stdout, stderr."""
    code = leenet_main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_run_dir_without_model_is_one_line(digits, tmp_path, capsys) -> None:
    code, out, err = _leenet(["predict", str(tmp_path), str(digits["files"][0])], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1) and "has no model.pt" in err
    code, out, err = _leenet(["export", str(tmp_path), "--out", str(tmp_path / "export")], capsys)
    assert (code, err.count("\n")) == (2, 1) and "model.pt" in err


@pytest.mark.parametrize("damage, message", [("missing", "stage1.onnx is missing"),
                                             ("altered", "stage1.onnx was altered")])
def test_cli_damaged_export_is_one_line(digits, tmp_path, capsys, damage: str, message: str) -> None:
    export = Path(shutil.copytree(digits["export"], tmp_path / "export"))
    graph = export / "stage1.onnx"
    if damage == "missing":
        graph.unlink()
    else:
        data = bytearray(graph.read_bytes())
        data[-1] ^= 0xFF
        graph.write_bytes(bytes(data))
    code, out, err = _leenet(["predict", str(export), str(digits["files"][0]), "--engine", "onnx"], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1) and message in err


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_cli_reports_a_non_image_and_runs_the_rest(digits, tmp_path, capsys, engine: str) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    model = digits["run"] if engine == "torch" else digits["export"]
    files = [str(digits["files"][0]), str(notes), str(digits["files"][1])]
    code, out, err = _leenet(["predict", str(model), *files, "--engine", engine, "--json", "--batch-size", "2"],
                             capsys)
    assert code == 1 and [json.loads(line)["file"] for line in out.splitlines()] == [files[0], files[2]]
    assert err.count("\n") == 1 and "cannot read image" in err and "notes.png" in err


def test_wrong_shape_batches_are_one_line(digits, tmp_path, capsys) -> None:
    with pytest.raises(ExportError, match=r"expected a batch of shape \(N, 1, 8, 8\), got \(2, 1, 28, 28\)") as err:
        ExitRunner(digits["export"])(np.zeros((2, 1, 28, 28), np.float32))
    assert "\n" not in str(err.value)
    # the CLI preprocesses to the manifest's size, so only an edited manifest could feed a wrong shape
    export = Path(shutil.copytree(digits["export"], tmp_path / "export"))
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["preprocessing"]["image_size"] = [28, 28]
    (export / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = _leenet(["predict", str(export), str(digits["files"][0]), "--engine", "onnx"], capsys)
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert "preprocessing makes (1, 28, 28) images but its graphs read input_shape (1, 8, 8)" in err
