"""Add the exit gallery to the committed Fashion-MNIST benchmark reports.

``python benchmarks/redraw_gallery.py [--which sdn pool]`` (from the repository root): a
benchmark keeps no per-sample outputs, so for each committed report this rebuilds seed 0's
exits exactly as :mod:`fashion_mnist` does (the cached backbone, and the cached seed-0 SDN heads
or pooled features), refits only the reported gate method (``gate_method``) at the selected
alpha, routes the test split at the selected threshold, and checks the refit's test accuracy
and cost against ``results["selected"]`` (the backbone may have been retrained since: a
difference over 0.1 pt is printed loudly and recorded in ``gallery_note``). Then it adds the
gallery to the report's ``results.json`` (every other key kept as it is), writes ``gallery.npz``
beside it and draws ``report.html`` again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import (  # noqa: E402
    EXITS,
    METHODS,
    cached_backbone_stages,
    feature_cache_path,
    head_cache_path,
    pooled_features,
    run_seed,
    trained_exits,
)
from gallery import add_gallery, selected_exits  # noqa: E402

from leenet.files import replace_atomically  # noqa: E402
from leenet.policy import summarize  # noqa: E402
from leenet.report import write_report  # noqa: E402
from leenet.report.results import Results  # noqa: E402

REPORTS = {"pool": "fashion_mnist", "sdn": "fashion_mnist_sdn"}
SEED = 0  # the seed results["selected"] was chosen on
TOLERANCE = 0.001  # 0.1 pt of accuracy or of cost


def pooled_cache(stages, splits, backbone: Path) -> dict:
    """The pooled features :func:`fashion_mnist.main` caches beside the backbone: loaded when they are
    newer than the backbone, else computed (a pass over 70k images) and cached again."""
    path = feature_cache_path(backbone)
    if path.exists() and path.stat().st_mtime >= backbone.stat().st_mtime:
        print(f"pooled features: {path}", flush=True)
        return torch.load(path, weights_only=False)
    print(f"pooled features: computing them for {backbone} (train, calib, test) ...", flush=True)
    start = time.perf_counter()
    feats = {k: pooled_features(stages, getattr(splits, k)) for k in ("train", "calib", "test")}
    replace_atomically(path, lambda f: torch.save(feats, f))
    print(f"pooled features: cached in {path} ({time.perf_counter() - start:.0f}s)", flush=True)
    return feats


def seed_exits(results: dict, stages, splits, backbone: Path):
    """Seed 0's ExitNet and its cached calibration, test and training outputs, as fashion_mnist.py built them."""
    head, epochs = results["heads"]["kind"], results["heads"]["epochs"]
    if head == "pool":
        return trained_exits(stages, list(EXITS), pooled_cache(stages, splits, backbone), splits, SEED, head, epochs)
    cache = head_cache_path(backbone, SEED, head, epochs)
    if cache.exists() and cache.stat().st_mtime < backbone.stat().st_mtime:
        raise SystemExit(f"{cache} is older than {backbone}: its heads were trained on another backbone; "
                         "delete it (or run benchmarks/fashion_mnist.py --head sdn) and try again")
    print(f"{head} heads: {'loading ' + str(cache) if cache.exists() else 'training them (long), caching in ' + str(cache)}",
          flush=True)
    return trained_exits(stages, list(EXITS), None, splits, SEED, head, epochs, cache)


def redraw(out_dir: Path, stages, splits, backbone: Path) -> bool:
    """Add the gallery to the report in ``out_dir``; True when the refit matches the committed figures."""
    path = out_dir / "results.json"
    results = json.loads(path.read_text())
    method, selected = results["gate_method"], results["selected"]
    alpha, threshold = float(selected["param"]), float(selected["threshold"])
    print(f"\n== {out_dir}: {method}, alpha {alpha}, threshold {threshold} (seed {SEED})", flush=True)
    net, calib, test, train = seed_exits(results, stages, splits, backbone)
    if net.exit_names != [e["name"] for e in results["exits"]]:
        raise SystemExit(f"exits {net.exit_names} are not the report's {[e['name'] for e in results['exits']]}")
    # run_seed's metrics read alpha 0's candidate, so the sweep has it too (predict gates share one fit)
    alphas = tuple(sorted({0.0, alpha}))
    out = run_seed(net, calib, test, train, SEED, {method: METHODS[method]}, None, alphas=alphas,
                   budget_curve_methods=())
    fits, gate_config = out["methods"][method]["fits"], METHODS[method][0]
    refit = next(c for c in out["methods"][method]["family"]
                 if math.isclose(c.param, alpha, abs_tol=1e-9) and math.isclose(c.threshold, threshold, abs_tol=1e-9))
    exits = selected_exits(net, fits, gate_config, test, alpha, threshold)
    routed = summarize(exits, test.correct, net.cost.detach().cpu())  # accuracy and fractions: cost unread
    if routed.accuracy != refit.test.accuracy or routed.exit_fractions != refit.test.exit_fractions:
        raise SystemExit("the gallery's exits are not the refit candidate's: selected_exits disagrees with the "
                         "evaluator")
    rows = [("test accuracy", refit.test.accuracy, selected["accuracy"]),
            ("test cost", refit.test.cost, selected["cost"])]
    rows += [(f"exit {name} fraction", a, b) for name, a, b in zip(net.exit_names, refit.test.exit_fractions,
                                                                   selected["exit_fractions"])]
    print(f"{'':22} {'refit':>9} {'committed':>9} {'diff (pt)':>9}")
    for name, a, b in rows:
        print(f"{name:22} {a:9.4f} {b:9.4f} {100 * (a - b):+9.2f}")
    off = [name for name, a, b in rows[:2] if abs(a - b) > TOLERANCE]
    figures = (f"refit test accuracy {refit.test.accuracy:.4f} (committed {selected['accuracy']:.4f}), cost "
               f"{refit.test.cost:.4f} (committed {selected['cost']:.4f})")
    note = (f"drawn by benchmarks/redraw_gallery.py on {datetime.now(timezone.utc).isoformat(timespec='seconds')} "
            f"from seed {SEED}'s heads with the '{method}' gates refit at alpha {alpha}, threshold {threshold} "
            f"on the backbone {backbone}: {figures}")
    if off:
        note = (f"MISMATCH: the gallery's model differs from the reported one by more than 0.1 pt in "
                f"{' and '.join(off)} (refit on the current cached backbone and heads: the report's own models "
                f"were not kept); {note}")
        banner = "!" * 100
        print(f"{banner}\n!! {note}\n{banner}", flush=True)
    else:
        print(f"refit matches the committed figures within 0.1 pt: {figures}", flush=True)
    add_gallery(results, out_dir, splits.test, test, exits, splits.spec.class_names, exit_names=net.exit_names,
                seed=SEED)
    results["gallery_note"] = note
    Results.from_dict(results, str(path))  # checked against the schema before anything is written
    text = json.dumps(results, indent=1, default=float) + "\n"
    replace_atomically(path, lambda f: f.write(text.encode()))
    report = write_report(results, out_dir)
    print(f"wrote {path} (gallery, gallery_note), {out_dir / 'gallery.npz'} and {report}", flush=True)
    return not off


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--which", nargs="+", choices=tuple(REPORTS), default=list(REPORTS),
                        help="which reports: pool (fashion_mnist) and/or sdn (fashion_mnist_sdn)")
    parser.add_argument("--backbone", type=Path, default=Path("runs/fmnist_backbone_w24.pt"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"),
                        help="folder holding the report folders")
    args = parser.parse_args()
    if not args.backbone.exists():  # cached_backbone_stages would train one: that is fmnist_backbone.py's job
        raise SystemExit(f"no backbone at {args.backbone}: train it first (python benchmarks/fmnist_backbone.py)")
    splits, stages = cached_backbone_stages(args.backbone)
    matched = {which: redraw(args.results / REPORTS[which], stages, splits, args.backbone) for which in args.which}
    print("\n" + ", ".join(f"{w}: {'matches' if ok else 'MISMATCH (see gallery_note)'}" for w, ok in matched.items()))


if __name__ == "__main__":
    main()
