"""Runs that survive a kill: SIGKILL during backbone or head training, then `--resume`, gives the
results of an uninterrupted run with the same seed; what a resumption refuses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leenet.cli import main
from leenet.config import RunConfig, TrainConfig
from leenet.resume import atomic_save, differences
from leenet.rundir import as_json

ARGS = ["--epochs", "4", "--head-epochs", "12", "--alphas", "0,0.5,1", "--gate-steps", "30", "--no-timing"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one thread: the same sums every time
UNCHANGING = ("timings",)


def _leenet(*args: str) -> list[str]:
    return [sys.executable, "-m", "leenet", "run", *args]


def _results(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    for key in UNCHANGING:
        results.pop(key)
    results["config"].pop("out")
    return results


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "whole"
    subprocess.run(_leenet("--out", str(out), *ARGS), env=ENV, check=True, capture_output=True)
    return out


def _kill_at(out: Path, line: str) -> str:
    """Start a run, SIGKILL it once it logs ``line`` (an epoch line), return what it logged."""
    proc = subprocess.Popen(_leenet("--out", str(out), *ARGS), env=ENV, stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    seen = []
    for text in proc.stderr:
        seen.append(text)
        if text.startswith(line):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


@pytest.mark.parametrize(("line", "reused"), [
    ("backbone epoch 2/4", r"backbone-epoch \(epoch [23]/4\)"),  # the kill lands in epoch 3, or in 4
    ("heads epoch 4/12", r"backbone, heads-epoch \(epoch \d+/12\)"),
], ids=["during-backbone-training", "during-head-training"])
def test_a_killed_run_resumes_to_the_same_results(uninterrupted: Path, tmp_path: Path, line: str,
                                                  reused: str) -> None:
    out = tmp_path / "killed"
    _kill_at(out, line)
    assert not (out / "results.json").exists() and (out / "config.json").is_file()
    done = subprocess.run(_leenet(*ARGS, "--resume", str(out)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = [ln for ln in done.stderr.splitlines() if ln.startswith("resume:")]
    assert len(resumed) == 1 and re.fullmatch(f"resume: reusing {reused} from {re.escape(str(out))}", resumed[0])
    assert _results(out) == _results(uninterrupted)
    assert not (out / "stages").exists(), "a finished run keeps only its usual files"


def test_resume_refuses_other_settings_and_finished_runs(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "partial"
    out.mkdir()
    config = json.loads((uninterrupted / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config))
    assert main(["run", *ARGS, "--epochs", "7", "--quiet", "--resume", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.epochs: 4 there, 7 here" in err, err
    assert main(["run", *ARGS, "--quiet", "--resume", str(uninterrupted)]) == 2
    assert "that run finished" in capsys.readouterr().err
    assert main(["run", *ARGS, "--quiet", "--resume", str(tmp_path / "none")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_a_setting_an_older_version_did_not_write_counts_only_when_asked_away_from_its_default() -> None:
    defaults = RunConfig().to_dict()
    older = as_json(RunConfig().to_dict())  # config.json as read back
    for key in ("backbone_training", "finetune_epochs", "backbone_lr_scale", "joint_weighting"):
        del older["train"][key]  # a config.json written before the fine-tune existed
    assert differences(older, RunConfig().to_dict(), defaults) == []
    joint = RunConfig(train=TrainConfig(backbone_training="joint")).to_dict()
    assert differences(older, joint, defaults) == [
        "train.backbone_training: absent there (made by an older version), joint here"]
    assert differences(as_json(defaults), joint, defaults) == ["train.backbone_training: frozen there, joint here"]


def test_the_fine_tunes_settings_count_only_when_a_run_fine_tunes() -> None:
    def config(**train) -> dict:
        return RunConfig(train=TrainConfig(**train)).to_dict()

    saved = as_json(config(backbone_lr_scale=0.1, finetune_epochs=3))  # a frozen run: neither was used
    assert differences(saved, config()) == []
    assert differences(saved, config(epochs=7)) == ["train.epochs: None there, 7 here"]
    joint = as_json(config(backbone_training="joint", backbone_lr_scale=0.1))
    assert differences(joint, config(backbone_training="joint", backbone_lr_scale=0.1)) == []
    assert differences(joint, config(backbone_training="joint", backbone_lr_scale=0.02)) == [
        "train.backbone_lr_scale: 0.1 there, 0.02 here"]
    assert differences(joint, config(backbone_lr_scale=0.1)) == ["train.backbone_training: joint there, frozen here"]


def test_an_interrupted_run_is_not_started_over_by_accident(tmp_path: Path, capsys) -> None:
    out = tmp_path / "interrupted"
    (out / "stages").mkdir(parents=True)
    assert main(["run", "--out", str(out), *ARGS, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err


def test_sigterm_keeps_the_stages_and_says_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "stopped"
    # 300 head epochs (~12 s on digits) leave the signal time to land in them on a loaded machine:
    # with ARGS' 12 the run could finish before the signal arrived (1.4 s after epoch 2)
    proc = subprocess.Popen(_leenet("--out", str(out), *ARGS, "--head-epochs", "300"), env=ENV,
                            stderr=subprocess.PIPE, text=True, stdout=subprocess.DEVNULL)
    for text in proc.stderr:
        if text.startswith("heads epoch 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert (out / "stages" / "backbone.pt").is_file() and (out / "config.json").is_file()
    assert f"--resume {out}" in rest and "--out" not in rest.split("continue with")[-1], rest


def test_stage_files_are_written_whole_and_read_as_plain_tensors(tmp_path: Path) -> None:
    path = tmp_path / "stage.pt"
    atomic_save({"w": torch.ones(3)}, path)
    atomic_save({"w": torch.zeros(3)}, path)  # replaced, never half written
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["stage.pt"]


JOINT = ["--epochs", "12", "--head-epochs", "4", "--backbone-training", "joint", "--alphas", "0,0.5,1",
         "--gate-steps", "30", "--no-timing"]  # a quarter of 12 backbone epochs: 3 joint epochs


@pytest.mark.slow  # three digits runs in subprocesses, about 30 s
def test_a_run_killed_in_its_joint_fine_tune_resumes_to_the_same_results(tmp_path: Path) -> None:
    whole, out = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_leenet("--out", str(whole), *JOINT), env=ENV, check=True, capture_output=True)
    proc = subprocess.Popen(_leenet("--out", str(out), *JOINT), env=ENV, stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    for text in proc.stderr:
        if text.startswith("joint epoch 1/3"):
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "results.json").exists() and (out / "stages" / "finetune-epoch.pt").is_file()
    done = subprocess.run(_leenet(*JOINT, "--resume", str(out)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reused = r"^resume: reusing backbone, finetune-epoch \(epoch [12]/3\), heads from "
    assert re.search(reused, done.stderr, re.M), done.stderr
    assert _results(out) == _results(whole)
    assert _results(out)["backbone"]["training"]["fine_tune"]["epochs"] == 3
