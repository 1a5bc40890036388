"""benchmarks/final_exit_ceiling.py: its combiners and their out-of-fold judgement, on synthetic
exits whose answers are known."""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import final_exit_ceiling as ceiling  # noqa: E402

from leenet.nn.combine import calibration_halves  # noqa: E402
from leenet.policy.cache import CachedOutputs  # noqa: E402


def _outputs(n: int, seed: int, early_informative: bool) -> CachedOutputs:
    """Two exits over 4 classes: the backbone (last) right on 70 % of the samples; the early exit
    right on every sample (``early_informative``) or pure noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    backbone = torch.randn(n, 4, generator=g)
    right = torch.rand(n, generator=g) < 0.7
    backbone[right, labels[right]] += 4.0
    early = torch.randn(n, 4, generator=g)
    if early_informative:
        early[torch.arange(n), labels] += 4.0
    return CachedOutputs(torch.stack([early, backbone], dim=1), [torch.zeros(n, 1)], labels)


def test_heavy_penalty_stacking_answers_as_the_backbone():
    cache = _outputs(400, 0, early_informative=True)
    predict = ceiling.stacking(cache.logits, cache.labels, lam=1e4)
    assert torch.equal(predict(cache.logits), cache.logits[:, -1].argmax(-1))


def test_light_penalty_stacking_learns_an_informative_early_exit():
    calib, test = _outputs(2000, 1, early_informative=True), _outputs(2000, 2, early_informative=True)
    predict = ceiling.stacking(calib.logits, calib.labels, lam=1e-3)
    backbone = float((test.logits[:, -1].argmax(-1) == test.labels).float().mean())
    assert float((predict(test.logits) == test.labels).float().mean()) > backbone + 0.2


def test_out_of_fold_judgement_matches_a_slow_reference():
    calib, test = _outputs(301, 3, early_informative=False), _outputs(200, 4, early_informative=False)

    def fit(raw, labels):  # a combiner that memorises: right in sample, no better than chance out of it
        table = {tuple(r.flatten().tolist()): int(y) for r, y in zip(raw, labels)}
        return lambda r: torch.tensor([table.get(tuple(x.flatten().tolist()), 0) for x in r])

    oof, on_test = ceiling.judged(fit, calib, test, seed=5)
    first, second = calibration_halves(len(calib.labels), 5)
    assert sorted(torch.cat([first, second]).tolist()) == list(range(301))  # the halves cover calibration once
    right = 0
    for fit_on, judge in ((first, second), (second, first)):
        for i in judge.tolist():  # every judged sample scored by the fit on the other half alone
            seen = {tuple(calib.logits[j].flatten().tolist()) for j in fit_on.tolist()}
            guess = 0 if tuple(calib.logits[i].flatten().tolist()) not in seen else None
            right += int(guess == int(calib.labels[i]))
    assert oof == right / 301
    assert on_test == float((test.labels == 0).float().mean())  # test samples were never memorised
