"""The `leenet` command end to end on the embedded digits data, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leenet.checkpoint import VERSION, load_checkpoint
from leenet.cli import build_parser, main
from leenet.config import parse_alphas
from leenet.data import load_dataset
from leenet.errors import LeenetError

FAST = ["--epochs", "12", "--head-epochs", "5", "--batch-size", "64", "--alphas", "0,0.25,0.5,1", "--gate-steps", "30",
        "--no-timing", "--quiet"]
REQUIRED_POLICY_KEYS = {"method", "param", "accuracy", "cost", "exit_fractions"}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["run", "--out", str(out), *FAST]) == 0
    return out


def test_run_writes_every_artifact(digits_run: Path) -> None:
    for name in ("results.json", "config.json", "model.pt", "report.html", "tradeoff.png"):
        assert (digits_run / name).stat().st_size > 0, name


def test_results_schema(digits_run: Path) -> None:
    results = json.loads((digits_run / "results.json").read_text())
    assert results["dataset"] == "digits"
    assert {"name", "accuracy", "flops"} <= results["backbone"].keys()
    assert results["backbone"]["flops"] > 0 and 0.5 < results["backbone"]["accuracy"] <= 1
    costs = [e["cost"] for e in results["exits"]]
    assert costs == sorted(costs) and costs[-1] == pytest.approx(1.0)  # the network cut at each exit
    assert [e["name"] for e in results["exits"]] == ["block1", "block2", "final"]
    methods = {p["method"] for p in results["policies"]}
    assert methods == {"leenet", "max_softmax", "entropy", "single_exit", "oracle"}
    for policy in results["policies"]:
        assert REQUIRED_POLICY_KEYS <= policy.keys()
        assert abs(sum(policy["exit_fractions"]) - 1) < 1e-5
    alphas = sorted(p["param"] for p in results["policies"] if p["method"] == "leenet")
    assert alphas == [0.0, 0.25, 0.5, 1.0]
    assert {"backbone", "heads", "gates", "evaluate"} <= results["timings"].keys()
    assert "multiply-adds" in results["flops_convention"]
    # the settings the run resolved where it used a dataset default (FAST sets 12 epochs and 5 head epochs)
    assert results["backbone"]["training"] == {"epochs": 12, "lr": 0.05, "precision": "fp32", "transfer": False,
                                              "mode": "frozen"}
    assert results["heads"] == {"kind": "flatten", "epochs": 5, "lr": 2e-3, "distill": 0.0, "distill_temperature": 3.0,
                                "cascade": "off", "ensemble": "off"}  # no ensemble_final: None is left out


def test_better_exits_run_end_to_end(tmp_path: Path) -> None:
    """Deep, distilled, cascaded heads with an ensemble over every exit: routed inference, the
    saved model and its reload all follow the combination."""
    out = tmp_path / "linked"
    assert main(["run", "--out", str(out), *FAST, "--head", "deep", "--distill", "0.5", "--cascade", "detach",
                 "--ensemble", "geometric", "--ensemble-final"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["heads"]["kind"] == "deep"
    assert results["heads"]["cascade"] == "detach" and results["heads"]["ensemble"] == "geometric"
    assert results["heads"]["distill"] == 0.5 and results["heads"]["ensemble_final"] is True
    assert results["routed_check"]["matches_simulation"] is True
    net = load_checkpoint(out / "model.pt")
    assert all(head.kind == "deep" for head in net.heads)
    assert net.cascade is not None and net.ensemble is not None and net.ensemble.final
    assert bool((net.ensemble.weight.tril(-1) != 0).any())  # exits do read earlier heads
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        logits, exits = net(x)
        every = net.forward_all(x)
    assert torch.allclose(logits, every.logits[torch.arange(16), exits], atol=1e-5)
    costs = [e["cost"] for e in results["exits"]]
    assert costs[-1] > 1.0  # the final exit's ensemble reads every head: they are paid for
    # the backbone's accuracy is the plain backbone's, the final exit's the ensemble's
    test = load_dataset("digits", calib_size=0.2, seed=0).test
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([int(test[i][1]) for i in range(len(test))])
    with torch.no_grad():
        h = images
        for stage in net.stages:
            h = stage(h)
        final = net.forward_all(images).logits[:, -1]
    assert results["backbone"]["accuracy"] == pytest.approx(float((h.argmax(1) == labels).float().mean()))
    assert results["exits"][-1]["accuracy"] == pytest.approx(float((final.argmax(1) == labels).float().mean()))


def test_routed_inference_matches_the_simulated_policy(digits_run: Path) -> None:
    results = json.loads((digits_run / "results.json").read_text())
    assert results["routed_check"]["matches_simulation"] is True
    assert results["routed_check"]["accuracy"] == pytest.approx(results["selected"]["accuracy"], abs=1e-6)


def test_checkpoint_reloads_with_the_same_predictions(digits_run: Path) -> None:
    net = load_checkpoint(digits_run / "model.pt")
    other = load_checkpoint(digits_run / "model.pt", alpha=1.0)
    x = torch.randn(16, 1, 8, 8)
    logits, exits = net(x)
    again, exits_again = load_checkpoint(digits_run / "model.pt")(x)
    assert torch.equal(exits, exits_again) and torch.allclose(logits, again)
    assert (other(x)[1] == 0).all(), "alpha=1 gates send everything to the cheapest exit"
    payload = torch.load(digits_run / "model.pt", weights_only=True)
    assert payload["version"] == VERSION and "backbone_state" in payload


def test_earlier_results_are_never_overwritten(digits_run: Path, capsys) -> None:
    before = (digits_run / "results.json").read_bytes()
    assert main(["run", "--out", str(digits_run), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--overwrite" in err and len(err.splitlines()) == 1
    assert (digits_run / "results.json").read_bytes() == before


def test_weights_from_an_earlier_run_skip_backbone_training(digits_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "reuse"
    assert main(["run", "--out", str(out), "--weights", str(digits_run / "model.pt"), *FAST[2:]]) == 0
    first = json.loads((digits_run / "results.json").read_text())["backbone"]["accuracy"]
    reused = json.loads((out / "results.json").read_text())
    assert reused["backbone"]["accuracy"] == pytest.approx(first)
    assert reused["config"]["model"]["weights"] == str(digits_run / "model.pt")


def test_budget_mode_reports_what_it_chose(tmp_path: Path) -> None:
    out = tmp_path / "budget"
    assert main(["run", "--out", str(out), "--target-cost", "0.5", *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    budget = results["budget"]
    assert budget["kind"] == "target_cost" and budget["reachable"] and budget["margin"] == 1.5
    assert budget["calib"]["cost"] <= 0.5 and isinstance(budget["met_on_test"], bool)
    # the dataset's default gates, resolved (config.json says None for them); no budget curve for "hard"
    assert results["gates"]["training"]["objective"] == "hard" and results["gates"]["inputs"]["history"]
    assert set(results["versus_thresholds"]) == {"leenet"}


def test_unreachable_budget_is_said_plainly(tmp_path: Path, capsys) -> None:
    out = tmp_path / "unreachable"
    assert main(["run", "--out", str(out), "--target-cost", "0.001", *FAST]) == 0
    assert "UNREACHABLE" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["budget"]["reachable"] is False


BAD_INPUTS = [
    (["--dataset", "cifar"], "digits"),
    (["--arch", "resnet5"], "resnet50"),
    (["--exits", "block9"], "block1"),
    (["--alpha", "1.5"], "[0, 1]"),
    (["--alphas", "0:2:0.5"], "[0, 1]"),
    (["--alphas", "a,b"], "0:1:0.05"),
    (["--alpha", "nan"], "[0, 1]"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fmnist"], "--download"),
    (["--arch", "vgg11", "--image-size", "8"], "--image-size"),
    (["--target-cost", "0.5", "--max-drop", "0.01"], "not both"),
    (["--max-drop", "5"], "fraction"),
    (["--budget-margin", "-1"], "--budget-margin"),
    (["--budget-margin", "nan"], "--budget-margin"),
    (["--lr", "-0.1"], "--lr"),
    (["--fit-gates-on", "train", "--objective", "hard"], "--objective predict"),
    (["--alphas", "0:1:1e-9"], "at most 1001"),  # would be a billion gate fits
    (["--alphas", "0:inf:0.1"], "[0, 1]"),
    (["--calib-size", "inf"], "--calib-size"),
    (["--calib-size", "1.5"], "whole number"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**32)], "--seed"),
    (["--lr", "1e300"], "--lr"),
    (["--gate-hidden", "100000000"], "--gate-hidden"),
    (["--distill", "1.5"], "--distill"),
    (["--distill", "nan"], "--distill"),
    (["--distill", "0.5", "--distill-temperature", "0"], "--distill-temperature"),
    (["--image-size", "0"], "--image-size"),
    (["--epochs", "0"], "needs --weights"),  # would keep an untrained backbone
    (["--data-dir", "/tmp"], "would be ignored"),  # digits reads no files
]


@pytest.mark.parametrize("args", [["run", "--epochs", "-3"], ["run", "--head", "bogus"], ["bogus"], ["exits"]])
def test_argument_errors_are_one_line_too(args: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "--help`)" in err


@pytest.mark.parametrize(("args", "hint"), BAD_INPUTS)
def test_bad_input_gives_one_line_with_the_fix(args: list[str], hint: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    assert main(["run", "--out", str(out), *FAST, *args]) == 2  # later flags win
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, err
    assert hint in errors[0], err
    assert not (out / "results.json").exists()


def test_out_that_cannot_be_created_fails_before_any_work(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("not a directory")
    assert main(["run", "--out", str(tmp_path / "afile" / "sub"), *FAST]) == 2
    err = capsys.readouterr()
    assert "cannot create --out" in err.err and "backbone" not in err.out  # nothing was trained


def test_failed_run_leaves_no_empty_run_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "none"), *FAST]) == 2
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_batches_that_cannot_fit_in_memory_fail_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    import leenet.preflight as preflight

    monkeypatch.setattr(preflight, "available_memory", lambda device: 2**20)  # 1 MiB free
    assert main(["run", "--out", str(tmp_path / "big"), *FAST]) == 2
    captured = capsys.readouterr()
    assert "GiB for training the backbone" in captured.err and "lower --batch-size or --image-size" in captured.err
    assert "backbone: training" not in captured.out
    assert not (tmp_path / "big").exists()


def test_memory_estimate(monkeypatch) -> None:
    """Training prices every layer's output, evaluation the largest one twice, 2 bytes a value."""
    import leenet.preflight as preflight

    cpu = torch.device("cpu")
    assert (preflight.available_memory(cpu) or 1) > 0  # MemAvailable read on Linux, None elsewhere
    monkeypatch.setattr(preflight, "available_memory", lambda device: 2**30)  # 1 GiB free
    preflight.check_memory((2**20, 2**16), 256, 28, cpu, training=True)  # 512 MiB
    preflight.check_memory((2**30, 2**20), 128, 28, cpu, training=False)  # 512 MiB: only the largest counts
    with pytest.raises(LeenetError, match=r"--batch-size 1024 at --image-size 28 needs at least 4\.0 GiB for training"):
        preflight.check_memory((2**21, 2**16), 1024, 28, cpu, training=True)
    monkeypatch.setattr(preflight, "available_memory", lambda device: None)  # unknown: nothing refused
    preflight.check_memory((2**40, 2**40), 1024, 28, cpu, training=True)


def test_sigterm_unwinds_through_the_clean_up(tmp_path: Path) -> None:
    """A run killed by SIGTERM (a scheduler's time limit) leaves no empty directory and exits 143."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "killed"
    code = ("import sys, leenet.pipeline as p, time\n"
            "p._run_into = lambda out, *a, **k: (print('started', flush=True), time.sleep(60))\n"
            "from leenet.cli import main\n"
            f"sys.exit(main(['run', '--out', {str(out)!r}, '--quiet']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    assert out.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not out.exists()


def test_results_written_meanwhile_by_another_run_are_kept(tmp_path: Path, monkeypatch, capsys) -> None:
    """Two runs into one --out: the one that finishes second writes beside the first, never over it."""
    import leenet.pipeline as pipeline

    out = tmp_path / "shared"
    real = pipeline.describe_run

    def other_run_finishes_first(*args, **kwargs):
        (out / "results.json").write_text('{"from": "the other run"}')
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "describe_run", other_run_finishes_first)
    assert main(["run", "--out", str(out), *FAST]) == 0
    assert json.loads((out / "results.json").read_text()) == {"from": "the other run"}
    assert (tmp_path / "shared-2" / "results.json").is_file() and (tmp_path / "shared-2" / "model.pt").is_file()
    assert "writing this run's to" in capsys.readouterr().err


def test_errors_are_printed_on_one_line(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.tar.gz"  # tarfile's reason lists every method it tried, one per line
    junk.write_text("this is no tarball")
    assert main(["run", "--dataset", "cifar10", "--data-dir", str(junk), "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read CIFAR-10") and len(err.splitlines()) == 1, err


def test_default_run_directories_are_unique(tmp_path: Path, monkeypatch) -> None:
    from leenet.rundir import prepare_out_dir

    monkeypatch.chdir(tmp_path)
    first = prepare_out_dir(None, "digits", "digits_cnn", overwrite=False)
    second = prepare_out_dir(None, "digits", "digits_cnn", overwrite=False)
    assert first != second and first.is_dir() and second.is_dir()


@pytest.mark.parametrize("content, hint", [("{}", "lacks exits"), ("[]", "not a LEENet results file"),
                                           ("null", "not a LEENet results file"), ("\xff\xfe", "cannot read")])
def test_report_on_a_damaged_results_file(tmp_path: Path, capsys, content: str, hint: str) -> None:
    (tmp_path / "results.json").write_bytes(content.encode("latin-1"))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and hint in err and len(err.splitlines()) == 1, err


def test_report_on_results_with_broken_entries(digits_run: Path, tmp_path: Path, capsys) -> None:
    results = json.loads((digits_run / "results.json").read_text())
    results["policies"][0]["cost"] = None
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "damaged" in err and len(err.splitlines()) == 1, err


def test_corrupt_and_mismatched_checkpoints(tmp_path: Path, capsys) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    assert main(["run", "--out", str(tmp_path / "a"), "--weights", str(corrupt), *FAST]) == 2
    mismatched = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, mismatched)
    assert main(["run", "--out", str(tmp_path / "b"), "--weights", str(mismatched), *FAST]) == 2
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 2
    assert "Traceback" not in err
    with pytest.raises(LeenetError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(LeenetError, match="not a LEENet checkpoint"):
        load_checkpoint(mismatched)


@pytest.mark.parametrize("damage", ["no_state_dict", "unknown_gate_setting", "gate_none", "state_dict_list",
                                    "gate_bank_none"])
def test_structurally_damaged_checkpoints(digits_run: Path, tmp_path: Path, damage: str) -> None:
    payload = torch.load(digits_run / "model.pt", weights_only=True)
    if damage == "no_state_dict":
        del payload["state_dict"]
    elif damage == "unknown_gate_setting":
        payload["spec"]["gate"] = {**payload["spec"]["gate"], "foo": 1}
    elif damage == "gate_none":
        payload["spec"]["gate"] = None
    elif damage == "state_dict_list":
        payload["state_dict"] = [1]
    else:
        payload["gate_bank"] = None
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(LeenetError, match="damaged|cannot read"):
        load_checkpoint(tmp_path / "damaged.pt", alpha=0.5)


def test_checkpoint_alpha_must_be_a_number_in_range(digits_run: Path) -> None:
    for bad in ("x", 1.5):
        with pytest.raises(LeenetError, match=r"\[0, 1\]"):
            load_checkpoint(digits_run / "model.pt", alpha=bad)


def test_parse_alphas() -> None:
    assert parse_alphas("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_alphas("0.1, 0.3") == (0.1, 0.3)
    assert len(parse_alphas("0:1:0.05")) == 21


def test_help_teaches(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-dir", "--download", "--arch", "--weights", "--exits", "--head",
                 "--alphas", "--epochs", "--seed", "--device", "--out", "--target-cost", "--max-drop",
                 "--budget-margin"):
        assert flag in text
    assert "examples:" in text


def test_help_states_the_dataset_defaults_the_pipeline_uses() -> None:
    """The per-dataset defaults are written into --help (importing the pipeline there would slow it): keep them true."""
    from leenet.defaults import DATASET_DEFAULTS

    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.values() if a.prog.endswith("run"))
    helps = {a.dest: " ".join(a.help.split()) for a in run._actions if a.help}
    for dataset, key in (("digits", "digits"), ("fashion-mnist", "fashion-mnist"), ("cifar10", "cifar"),
                         ("imagenette", "imagenette")):
        assert f"{DATASET_DEFAULTS[dataset].epochs} on {key}" in helps["epochs"], dataset
    assert f"{DATASET_DEFAULTS['digits'].head_epochs} on digits" in helps["head_epochs"]
    assert f"{DATASET_DEFAULTS['fashion-mnist'].head_epochs} on fashion-mnist" in helps["head_epochs"]
    assert {DATASET_DEFAULTS[d].head_epochs for d in ("cifar10", "cifar100", "imagenette", "folder")} == {5}
    assert DATASET_DEFAULTS["folder"].epochs == DATASET_DEFAULTS["imagenette"].epochs
    assert DATASET_DEFAULTS["cifar100"].epochs == DATASET_DEFAULTS["cifar10"].epochs


def test_listings(capsys) -> None:
    assert main(["backbones"]) == 0 and "resnet50" in capsys.readouterr().out
    assert main(["datasets"]) == 0 and "fashion-mnist" in capsys.readouterr().out
    assert main(["exits", "--arch", "digits_cnn"]) == 0
    valid = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("valid:"))
    # one name per cut, in execution order: block1 and its last child block1.2 end at the same place
    assert valid.split()[1:4] == ["block1.0..block1.1,", "block1,", "block2.0..block2.2,"] and "block1.2" not in valid
    assert main(["backbones"]) == 0 and "default exits: block1,block2" in capsys.readouterr().out
    assert main(["datasets"]) == 0 and "no files needed" in capsys.readouterr().out


def test_gate_options_override_the_dataset_defaults(tmp_path: Path) -> None:
    out = tmp_path / "predict"
    assert main(["run", "--out", str(out), *FAST, "--objective", "predict", "--loss", "error",
                 "--gate-pooled", "--no-gate-history", "--precision", "bf16"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["precision"] == "bf16"
    assert config["train"]["gates"]["objective"] == "predict" and config["train"]["gates"]["loss"] == "error"
    assert config["model"]["gate"] == {"hidden": 16, "history": False, "pooled": True, "classes": False}
    results = json.loads((out / "results.json").read_text())
    assert results["routed_check"]["matches_simulation"] is True
    alpha0 = next(p for p in results["policies"] if p["method"] == "leenet" and p["param"] == 0.0)
    assert alpha0["exit_fractions"][-1] == 1.0, "alpha = 0 runs everything to the backbone's exit"
    assert alpha0["cost"] == pytest.approx(1.0), "... and no head on the way: it costs exactly the backbone"
    budgets = [p["param"] for p in results["policies"] if p["method"] == "leenet_budget"]  # "predict" only
    assert budgets and budgets == sorted(budgets) and budgets[-1] <= 1.0 and len(budgets) > 50
    assert set(results["versus_thresholds"]) == {"leenet", "leenet_budget"}
    net = load_checkpoint(out / "model.pt")
    assert net.gate_config.pooled and not net.gate_config.history


def test_gates_fit_on_the_training_split_with_class_inputs(tmp_path: Path) -> None:
    out = tmp_path / "train_fit"
    assert main(["run", "--out", str(out), *FAST, "--objective", "predict", "--loss", "error",
                 "--fit-gates-on", "train", "--gate-classes", "--no-timing"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["gates"]["predictors_on"] == "train" and config["model"]["gate"]["classes"]
    results = json.loads((out / "results.json").read_text())
    assert results["leenet_calibration_figures"].startswith("held out")
    assert results["routed_check"]["matches_simulation"] is True
    net = load_checkpoint(out / "model.pt")
    assert net.gate_config.classes


def test_another_objective_on_fashion_mnist_drops_the_train_split_default() -> None:
    from leenet.cli import build_parser
    from leenet.cli_run import run_config_from_args

    args = build_parser().parse_args(["run", "--dataset", "fashion-mnist", "--objective", "soft"])
    gates = run_config_from_args(args).train.gates
    assert gates.objective == "soft" and gates.predictors_on == "calib"
    args = build_parser().parse_args(["run", "--dataset", "fashion-mnist"])
    assert run_config_from_args(args).train.gates is None  # the dataset default: predict, fit on train


def test_run_prints_the_measured_speed_and_says_when_routing_lost() -> None:
    from leenet.report import speed_line

    clock = {"device": "cpu", "measured_speedup": 1.59, "throughput_batch": 256, "latency_speedup": 1.23,
             "flops_speedup": 2.01}
    line = speed_line(clock)
    assert "1.59x" in line and "1.23x" in line and "2.01x" in line and "slower" not in line
    assert "slower than the backbone" in speed_line({**clock, "device": "cuda:0", "measured_speedup": 0.22})


def test_cost_latency_prices_exits_in_measured_time(tmp_path: Path) -> None:
    """--cost latency: gates and budgets use measured time; results.json keeps both units."""
    out = tmp_path / "lat"
    assert main(["run", "--out", str(out), "--cost", "latency", *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    cost = results["cost"]
    assert cost["unit"] == "latency" and cost["latency"]["batch_size"] == 1
    assert cost["flops"]["cost"] != cost["latency"]["relative"]
    # the exits' costs are the measured ones; their FLOPs are still counted
    assert [e["cost"] for e in results["exits"]][-1] == pytest.approx(1.0)
    assert all(e["flops"] > 0 for e in results["exits"])
    assert load_checkpoint(out / "model.pt").cost.tolist() == pytest.approx(cost["latency"]["relative"])
    with pytest.raises(SystemExit):
        main(["run", "--cost", "seconds"])


def test_backbone_training_reaches_the_config_and_unknown_modes_list_the_valid_ones(capsys) -> None:
    from leenet.cli_run import run_config_from_args

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "finetune tunes the backbone alone the same way" in help_text
    assert run_config_from_args(build_parser().parse_args(["run"])).train.backbone_training == "frozen"
    joint = build_parser().parse_args(["run", "--backbone-training", "joint"])
    assert run_config_from_args(joint).train.backbone_training == "joint"
    with pytest.raises(SystemExit):
        main(["run", "--backbone-training", "joined"])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(m in err for m in ("'frozen'", "'finetune'", "'joint'")), err


def test_the_fine_tune_settings_are_flags_of_leenet_run() -> None:
    from leenet.cli_run import run_config_from_args
    from leenet.config import TrainConfig

    parser = build_parser()
    train = run_config_from_args(parser.parse_args(
        ["run", "--backbone-training", "joint", "--finetune-epochs", "3", "--backbone-lr-scale", "0.2",
         "--joint-weighting", "equilibrium"])).train
    assert (train.backbone_training, train.finetune_epochs, train.backbone_lr_scale, train.joint_weighting) == (
        "joint", 3.0, 0.2, "equilibrium")
    defaults = run_config_from_args(parser.parse_args(["run"])).train
    assert (defaults.finetune_epochs, defaults.backbone_lr_scale, defaults.joint_weighting) == (
        TrainConfig.finetune_epochs, TrainConfig.backbone_lr_scale, TrainConfig.joint_weighting)
    with pytest.raises(LeenetError, match="--finetune-epochs must be a fraction"):
        run_config_from_args(parser.parse_args(["run", "--finetune-epochs", "1.5"]))
    with pytest.raises(SystemExit):  # argparse refuses an unknown weighting with the valid choices
        parser.parse_args(["run", "--joint-weighting", "imta"])
