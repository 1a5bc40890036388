"""benchmarks/gallery.py: the exits of a benchmark's fitted gates on a cached split (against the
routed model, one sample at a time, and the evaluator's figures) and the gallery it draws into a
benchmark report."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import INPUT_SHAPE, NUM_CLASSES, mix_exits_

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gallery as bench_gallery  # noqa: E402

COMMITTED = ROOT / "benchmarks" / "results" / "fashion_mnist" / "results.json"


def _tiny_net_and_cache(tiny_stages, tiny_input, gate_config):
    from leenet.nn.model import ExitNet
    from leenet.policy.cache import CachedOutputs

    net = ExitNet.from_stages(tiny_stages, num_classes=NUM_CLASSES, example_input=torch.zeros(1, *INPUT_SHAPE),
                              gate_config=gate_config).eval()
    with torch.no_grad():
        out = net.forward_all(tiny_input)
    labels = torch.where(torch.arange(len(tiny_input)) % 3 == 0, 0, out.logits[:, -1].argmax(-1))
    return net, CachedOutputs(out.logits, out.pooled, labels)


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_selected_exits_are_the_routed_models_one_sample_at_a_time(tiny_stages, tiny_input, pooled, threshold):
    from leenet.config import GateConfig
    from leenet.policy.sweep import GateFit

    net, cache = _tiny_net_and_cache(tiny_stages, tiny_input, GateConfig(pooled=pooled))
    mix_exits_(net, tiny_input, threshold)  # random gates, about half leaving at each, none at the threshold
    fits = {0.1: GateFit(torch.nn.ModuleList([torch.nn.Identity()] * 3), None),
            0.35: GateFit(net.gates, None)}  # 0.35 as JSON gives it back: round(0.05 * 7, 2)
    exits = bench_gallery.selected_exits(net, fits, net.gate_config, cache, 0.35, threshold)
    with torch.no_grad():
        reference = torch.cat([net(x[None])[1] for x in tiny_input])  # routed inference, batch of one
    assert exits.dtype == torch.long and exits.shape == (len(tiny_input),)
    assert torch.equal(exits, reference)
    assert len(exits.unique()) == net.num_exits  # every exit taken: the comparison means something


def test_selected_exits_measure_what_the_evaluator_measured(tiny_stages, tiny_input):
    from leenet.config import GateConfig, GateTrainConfig
    from leenet.evaluate import DECISION_THRESHOLDS, Evaluator
    from leenet.policy import summarize
    from leenet.policy.fit import GateProblem
    from leenet.policy.sweep import fit_gate_sweep

    net, cache = _tiny_net_and_cache(tiny_stages, tiny_input, GateConfig())
    calib, test = cache.subset(torch.arange(0, 64, 2)), cache.subset(torch.arange(1, 64, 2))
    config = GateTrainConfig(objective="predict", loss="error", steps=50)
    alphas = (0.0, 0.3, 0.6)
    fits = fit_gate_sweep(GateProblem.of(net), calib, alphas, config, seed=0)
    ev = Evaluator.of(net, calib, test)
    for alpha in alphas:
        candidates = ev.leenet(alpha, fits[alpha].gates, net.gate_config, DECISION_THRESHOLDS, fits[alpha].calib_probs)
        for c in candidates:
            exits = bench_gallery.selected_exits(net, fits, net.gate_config, test, alpha, c.threshold)
            mine = summarize(exits, test.correct, ev.cost)
            assert (mine.accuracy, mine.exit_fractions) == (c.test.accuracy, c.test.exit_fractions)


def test_selected_exits_refuse_a_missing_alpha_and_a_wrong_cache(tiny_stages, tiny_input):
    from leenet.config import GateConfig
    from leenet.policy.sweep import GateFit

    net, cache = _tiny_net_and_cache(tiny_stages, tiny_input, GateConfig())
    fits = {0.2: GateFit(net.gates, None)}
    with pytest.raises(KeyError, match="0.25"):
        bench_gallery.selected_exits(net, fits, net.gate_config, cache, 0.25, 0.5)
    from leenet.policy.cache import CachedOutputs

    fewer = CachedOutputs(cache.logits[:, 1:], cache.pooled[1:], cache.labels)
    with pytest.raises(ValueError, match="exits"):
        bench_gallery.selected_exits(net, fits, net.gate_config, fewer, 0.2, 0.5)


def _synthetic_test_split(n: int = 120, exits: int = 5, classes: int = 10):
    """A tiny in-memory grey test split (12x12 uint8), its cached outputs and a routing."""
    from leenet.datasets.memory import TensorImageDataset
    from leenet.policy.cache import CachedOutputs

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=gen, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    dataset = TensorImageDataset(images, labels, mean=(0.5,), std=(0.25,))
    logits = torch.randn(n, exits, classes, generator=gen)
    cache = CachedOutputs(logits, [torch.randn(n, 4, generator=gen) for _ in range(exits - 1)], labels)
    routing = torch.randint(0, exits, (n,), generator=gen)
    return dataset, cache, routing


def test_add_gallery_draws_a_benchmark_reports_gallery(tmp_path):
    from leenet.report import read_gallery_file, write_report
    from leenet.report.results import Results

    results = json.loads(COMMITTED.read_text())  # a multi-seed benchmark's results, as committed
    results.pop("gallery", None)
    dataset, cache, routing = _synthetic_test_split()
    names = tuple(f"class {c}" for c in range(10))
    bench_gallery.add_gallery(results, tmp_path, dataset, cache, routing, names)

    section = results["gallery"]
    assert section["file"] == "gallery.npz" and section["total"] == 120 and section["seed"] == 0
    assert list(section["class_names"]) == list(names)
    assert [e["name"] for e in section["exits"]] == [e["name"] for e in results["exits"]]
    assert [e["left"] for e in section["exits"]] == torch.bincount(routing, minlength=5).tolist()
    for e, exit_index in zip(section["exits"], range(5)):
        assert all(int(routing[i]) == exit_index for i in e["indices"])
    final = cache.logits[:, -1].argmax(-1)
    assert section["final_wrong_count"] == int((final != cache.labels).sum())
    assert np.allclose(np.sum(section["class_exit_share"], 1), 1.0, atol=1e-3)
    json.dumps(results)  # stored as plain JSON, like the pipeline's
    assert Results.from_dict(results).gallery is not None

    thumbs = read_gallery_file(tmp_path / "gallery.npz")
    assert thumbs.images.dtype == np.uint8 and thumbs.images.shape[1:] == (12, 12, 1)
    rows = thumbs.indices
    assert np.array_equal(thumbs.images[..., 0], dataset.images[rows, 0].numpy())  # as stored, not normalized
    assert np.array_equal(thumbs.exit_index, routing[rows].numpy())
    assert np.array_equal(thumbs.predictions, cache.logits[rows, routing[rows]].argmax(-1).numpy())
    assert np.array_equal(thumbs.final_predictions, final[rows].numpy())

    html = write_report(results, tmp_path).read_text()
    gallery = html.split("<section id='gallery'>")[1].split("</section>")[0]
    assert "no exit gallery" not in gallery and "cannot be shown" not in gallery
    assert gallery.count("<figure class='thumb") >= 5 and "data:image/png;base64," in gallery
    assert (tmp_path / "class_exits.png").exists()


def test_add_gallery_refuses_outputs_of_another_split(tmp_path):
    dataset, cache, routing = _synthetic_test_split()
    with pytest.raises(ValueError, match="disagree"):
        bench_gallery.add_gallery({"exits": []}, tmp_path, dataset, cache, routing[:-1], ("a",) * 10)
    assert not (tmp_path / "gallery.npz").exists()
