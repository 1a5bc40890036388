"""The self-contained ``report.html`` of a run: key numbers, plots, tables and the exit gallery.

The page embeds its images and runs no script: it opens from a file, offline, anywhere.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any, Mapping

from leenet.report import plots
from leenet.report.common import (
    as_results,
    esc,
    flops,
    param,
    pct,
    policies,
    same,
    setting,
    slower_flag,
)
from leenet.report.gallery import CSS as GALLERY_CSS
from leenet.report.gallery import gallery_html
from leenet.report.results import OperatingPoint, Policy, Results

METHOD_NAMES = {"leenet": "LEENet", "leenet_budget": "LEENet (budget)", "max_softmax": "max-softmax",
                "entropy": "entropy", "single_exit": "single exit", "oracle": "oracle"}
WALL_CLOCK = {  # WallClock field -> (label, value format)
    "device": ("device", "{}"),
    "throughput_batch": ("throughput batch size", "{:,} images"),
    "latency_samples": ("latency measured over", "{:,} images, one at a time"),
    "backbone_throughput": ("backbone throughput", "{:,.0f} images/s"),
    "leenet_throughput": ("LEENet throughput", "{:,.0f} images/s"),
    "measured_speedup": ("throughput speed-up", "{:.2f}×"),
    "backbone_latency_ms": ("backbone latency at batch 1", "{:.3g} ms per image"),
    "leenet_latency_ms": ("LEENet latency at batch 1", "{:.3g} ms per image"),
    "latency_speedup": ("latency speed-up at batch 1", "{:.2f}×"),
    "flops_speedup": ("FLOPs speed-up", "{:.2f}×"),
}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def _header(results: Results) -> str:
    bb, info = results.backbone, results.dataset_info
    facts = [f"backbone <b>{esc(bb.name)}</b>", f"accuracy <b>{esc(pct(bb.accuracy, digits=2))}</b>",
             f"<b>{esc(flops(bb.flops))}</b> per image", f"{len(results.exits)} exits"]
    counts = [(f.name, getattr(info, f.name)) for f in dataclasses.fields(info)] if info else []
    facts += [f"{esc(k.removeprefix('num_'))} {esc(v)}" for k, v in counts if k.startswith("num_") and v is not None]
    return f"<h1>LEENet report · {esc(results.dataset)}</h1><p class='facts'>{' · '.join(facts)}</p>"


def _key_numbers(results: Results) -> str:
    """Cards (label, value, note) for each key number present in ``results``."""
    cards = []
    if sel := results.selected:
        drop = 100 * (sel.accuracy - results.backbone.accuracy)
        method = "" if sel.method == "leenet" else f"{sel.method} "
        legend = "α: cost weight, t: gate decision threshold" if not method else ""
        cards += [("selected model", method + setting(sel), ". ".join(filter(None, [sel.reason or "", legend]))),
                  ("selected accuracy", pct(sel.accuracy, sel.accuracy_std, 2), f"{drop:+.2f} pt vs backbone, on test"),
                  ("mean cost", f"{sel.cost:.1%}", "of backbone FLOPs, on test"),
                  ("FLOPs speed-up", f"{1 / max(sel.cost, 1e-9):.2f}×", "backbone FLOPs / mean cost")]
    wall = results.wall_clock
    if wall is not None and wall.measured_speedup is not None:
        latency = f"; batch-1 latency {wall.latency_speedup:.2f}×" if wall.latency_speedup is not None else ""
        slower = f"; {flag}" if (flag := slower_flag(wall)) else ""
        device = "?" if wall.device is None else wall.device
        batch = "?" if wall.throughput_batch is None else wall.throughput_batch
        cards.append(("measured speed-up", f"{wall.measured_speedup:.2f}×",
                      f"throughput, {device}, batch {batch}{latency}{slower}"))
    if budget := results.budget:
        goal = (f"accuracy drop ≤ {100 * budget.target:g} pt" if "drop" in budget.kind
                else f"mean cost ≤ {budget.target:.0%} FLOPs")
        held = {True: "met on test", False: "NOT met on test"}.get(budget.met_on_test, "unreachable")
        cards.append((f"budget: {goal}", held, budget.message))
    if check := results.routed_check:
        cards.append(("routed forward", "matches" if check.matches_simulation else "MISMATCH",
                      "real routed inference vs simulated policy"))
    html_cards = "".join(f"<div class='card{' warn' if 'slower than' in c else ''}'><div class='label'>{esc(a)}</div>"
                         f"<div class='value'>{esc(b)}</div><div class='sub'>{esc(c)}</div></div>" for a, b, c in cards)
    return f"<div class='cards'>{html_cards}</div>" if html_cards else ""


def _budget_names(points: list[OperatingPoint]) -> str:
    """One label for operating points that chose the same setting: ``accuracy at ≤ 25%, 50% FLOPs``."""
    parts: dict[str, list[str]] = {}
    for p in points:
        if p.kind == "max_cost" and p.target is not None:
            parts.setdefault("accuracy at ≤ {} FLOPs", []).append(f"{p.target:.0%}")
        elif p.kind == "max_drop" and p.target is not None:
            parts.setdefault("cost at ≤ {} pt drop", []).append(f"{100 * p.target:g}")
        else:
            parts.setdefault("{}", []).append(p.name)
    return "; ".join(form.format(", ".join(values)) for form, values in parts.items())


def _operating_points(results: Results) -> str:
    """Budgets solved on calibration, one row per method and setting: consecutive budgets that chose the
    same setting and fared the same on test share a row."""
    if not (points := results.operating_points):
        return ""
    selected, groups = results.selected, []
    seeds = len(results.seeds) if results.seeds is not None else None  # a multi-seed benchmark
    for p in points:
        prev = groups[-1][-1] if groups else None
        if prev is None:
            joins = False
        elif p.reachable:
            joins = same(p, prev)  # method, param and gate threshold
        else:
            joins = p.method == prev.method and not prev.reachable
        if joins and _held(p, seeds) == _held(prev, seeds):
            groups[-1].append(p)
        else:
            groups.append([p])
    rows = []
    for group in groups:
        p = group[0]
        method = METHOD_NAMES.get(p.method, p.method)
        if not p.reachable:
            rows.append([_budget_names(group), method, "–", "–", "–", "unreachable on calibration"])
            continue
        mark = " (the selected setting)" if same(p, selected) else ""
        rows.append([_budget_names(group), method, ("seed 0: " if seeds else "") + setting(p) + mark,
                     pct(p.accuracy, p.accuracy_std, 2), pct(p.cost, p.cost_std), _held(p, seeds)])
    slack = "" if results.budget_margin is None else \
        f" (each keeping {results.budget_margin:g} standard errors of slack)"
    note = (f"the best setting for each budget, chosen on calibration{slack} and reported on test; budgets that chose "
            "the same setting share a row. α: LEENet's cost weight; t: the decision threshold (LEENet: on its gates' "
            "exit probability; baselines: on the confidence score)")
    if seeds:
        note += (f". Mean ± std over {seeds} seeds: each seed chooses its own setting (seed 0's is shown) and the "
                 "last column counts the seeds whose budget held")
    return f"<h2>Operating points</h2><p class='note'>{esc(note)}</p>" + table(
        ["budgets", "method", "setting", "accuracy", "cost", "budget held on test"], rows)


def _held(point: OperatingPoint, seeds: int | None) -> str:
    """Whether an operating point's budget held on test: yes / NO, or in how many of ``seeds`` seeds."""
    if seeds and point.met_on_test_seeds is not None:
        held = point.met_on_test_seeds
        return f"{held} / {seeds} seeds" if held == seeds else f"{held} / {seeds} seeds (NOT all)"
    return {True: "yes", False: "NO"}.get(point.met_on_test, "–")


def _versus_thresholds(results: Results) -> str:
    if not (comparison := results.versus_thresholds):
        return ""
    names = {"leenet": "α sweep (decision threshold 0.5)", "leenet_budget": "budgets solved directly"}
    rows = [[names.get(method, method), f"{100 * c.area:+.2f}",
             f"{100 * c.worst_gap:+.2f} pt at {pct(c.worst_cost, digits=0)}", f"{c.max_jump:.3f}"]
            for method, c in comparison.items()]
    return ("<h2>LEENet against thresholds</h2><p class='note'>upper envelopes on the test split against the "
            "better of max-softmax and entropy, from the first exit's cost to the backbone's; positive = "
            "LEENet more accurate</p>" + table(
                ["LEENet curve", "area between envelopes (pt × cost)", "worst point",
                 "largest cost jump between neighbours"], rows))


def _policy_param(point: Policy, exit_names: list[str]) -> str:
    """A policy's parameter for a table; a single exit's index becomes the exit's name."""
    index = point.param
    if point.method == "single_exit" and isinstance(index, int) and 0 <= index < len(exit_names):
        return exit_names[index]
    return param(index)


def _policies_section(results: Results) -> str:
    names = [e.name for e in results.exits]
    gated = any(p.threshold is not None for p in results.policies)  # LEENet's gate decision threshold
    rows = [[p.method, _policy_param(p, names), *([param(p.threshold)] if gated else []),
             pct(p.accuracy, p.accuracy_std, 2), pct(p.cost, p.cost_std),
             *(pct(f, digits=0) for f in p.exit_fractions or [None] * len(names))]
            for p in results.policies]
    headers = ["method", "param (α, t or exit)", *(["gate threshold"] if gated else []), "accuracy", "cost", *names]
    return (f"<h2>Policies</h2><details><summary>all {len(rows)} evaluated policies (test split; exit columns: "
            f"fraction of samples leaving there)</summary>{table(headers, rows)}</details>")


def _fine_tune(results: Results) -> str:
    """The backbone's fine-tune after its exits were fitted: each epoch's calibration accuracies, the kept one."""
    training = results.backbone.training
    tune = training.fine_tune if training is not None else None
    if tune is None:
        return ""
    early = tune.early_accuracy or [()] * len(tune.final_accuracy)
    names = [e.name for e in results.exits[:-1]] if tune.early_accuracy else []
    rows = [["before" if k == 0 else f"{k}/{tune.epochs}", *(pct(a, digits=2) for a in row),
             pct(final, digits=2), "kept" if k == tune.chosen_epoch else ""]
            for k, (row, final) in enumerate(zip(early, tune.final_accuracy))]
    what = "with its heads (joint)" if tune.mode == "joint" else "alone, the heads fitted after (finetune)"
    return (f"<h2>Backbone fine-tune</h2><p class='note'>The backbone was fine-tuned {esc(what)} at learning rate "
            f"{esc(param(tune.backbone_lr))}; calibration accuracy after each epoch. {esc(tune.message)}.</p>"
            + table(["epoch", *names, "final", ""], rows))


def _timings(timings: Mapping[str, float] | None) -> str:
    if not timings:
        return ""
    rows = [[k.replace("_", " "), f"{v:.2f}"] for k, v in timings.items()]
    if not any(k.startswith("total") for k in timings):  # a recorded total is not summed again
        rows.append(["total", f"{sum(timings.values()):.2f}"])
    return "<h2>Timings</h2>" + table(["phase", "seconds"], rows)


def _wall_clock(results: Results) -> str:
    """The wall-clock measurement with readable labels and units (unmeasured figures left out)."""
    if (clock := results.wall_clock) is None:
        return ""
    rows = [[label, form.format(getattr(clock, key))] for key, (label, form) in WALL_CLOCK.items()
            if getattr(clock, key) is not None]
    if not rows:
        return ""
    note = "routed LEENet (the selected model) vs the plain backbone on test images; speed-ups above 1× are faster"
    flag = f"<p class='note'><b>{esc(flag)}</b></p>" if (flag := slower_flag(clock)) else ""
    return f"<h2>Wall clock</h2><p class='note'>{esc(note)}</p>{flag}" + table(["measure", "value"], rows)


def _config_value(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_config_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_config_value, value))
    return "none" if value is None else param(value)


def _resolved(results: Results, config: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """Setting (``section.key``) -> (the value the run used, where it came from) for settings a run may leave
    unset (None: a dataset default), from what ``results`` recorded; runs older than a record show none."""
    info, gates, heads, trained = results.dataset_info, results.gates, results.heads, results.backbone.training
    dataset, unused = "(dataset default)", "(unused: the backbone was not trained here)"
    epochs, lr, precision = (None, None, None) if trained is None else (trained.epochs, trained.lr, trained.precision)
    resolved = {
        "model.arch": (results.backbone.name, dataset),
        "model.head": (heads and heads.kind, dataset),
        "model.exits": ([e.name for e in results.exits[:-1]], "(the backbone's default exits)"),
        "model.gate": (gates and gates.inputs, dataset),
        "model.num_classes": (info and info.num_classes, "(the dataset's)"),
        "model.weights": ("none", "(backbone trained here)"),
        "data.data_dir": ("the dataset's default place", ""),
        "data.image_size": (info.image_shape[-1] if info and info.image_shape else None, "(the dataset's)"),
        "train.epochs": (epochs, dataset if epochs else "(weights used as they are)"),
        "train.lr": (lr or ("–" if trained else None), dataset if lr else unused),
        "train.precision": (precision or ("–" if trained else None), dataset if precision else unused),
        "train.head_epochs": (heads and heads.epochs, dataset),
        "train.distill": (heads and heads.distill, dataset),
        "model.cascade": (heads and heads.cascade, dataset),
        "model.ensemble": (heads and heads.ensemble, dataset),
        "model.ensemble_final": (heads and heads.ensemble_final, "(chosen on calibration, out of fold)"),
        "train.gates": (gates and gates.training, dataset),
    }
    if results.wall_clock is not None and (device := results.wall_clock.device):
        resolved["device"] = (config.get("device"), f"(ran on {device})")  # the request as given: any key may be unset
    if sel := results.selected:
        resolved["alpha"] = (setting(sel), f"(chosen: {sel.reason or 'by the run'})")
    return {key: value for key, value in resolved.items() if value[0] is not None}


def _config(results: Results) -> str:
    """The run's configuration, one row a setting; unset (null) settings show the value the run resolved."""
    if results.config is None:
        return ""
    flat = {}
    for key, value in results.config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    resolved = _resolved(results, results.config)
    rows = [[key, _config_value(value) if (value is not None and key != "device") or key not in resolved
             else f"{_config_value(resolved[key][0])} {resolved[key][1]}".strip()] for key, value in flat.items()]
    return ("<h2>Config</h2><details><summary>run configuration (settings left unset show the value the run used; "
            "config.json in the run directory keeps the request as given)</summary>"
            + table(["setting", "value"], rows) + "</details>")


def write_report(results: Results | Mapping[str, Any], out_dir: Path) -> Path:
    """Write the plots and a self-contained ``report.html`` (images embedded) into ``out_dir``.

    Args:
        results: a run's results (a plain results dict is read as the schema first); optional
            sections it lacks are left out of the page.
        out_dir: directory for ``tradeoff.png``, ``per_exit_accuracy.png``, ``exit_fractions.png``
            (when there are LEENet policies), ``class_exits.png`` (with a gallery) and
            ``report.html``; created if missing. The gallery's thumbnails file is read from here.

    Returns:
        The path of ``report.html``.
    """
    results, out_dir = as_results(results), Path(out_dir)
    exits = [[e.name, flops(e.flops), pct(e.cost), pct(e.accuracy, digits=2)] for e in results.exits]
    sections = [
        _header(results), _key_numbers(results), "<h2>Accuracy vs compute</h2>",
        _img(plots.plot_tradeoff(results, out_dir / "tradeoff.png"), "accuracy vs compute"),
        _operating_points(results), _versus_thresholds(results),
        "<h2>Exits</h2>", table(["exit", "FLOPs", "cost", "accuracy"], exits),
        _img(plots.plot_per_exit_accuracy(results, out_dir / "per_exit_accuracy.png"), "per-exit accuracy"),
        _fine_tune(results),
    ]
    if policies(results, "leenet"):
        fractions = plots.plot_exit_fractions(results, out_dir / "exit_fractions.png")
        sections += ["<h2>Where samples leave</h2>", _img(fractions, "exit fractions")]
    sections += [gallery_html(results, out_dir, _img), _policies_section(results), _wall_clock(results),
                 _timings(results.timings), _config(results)]
    footer = f"{esc(results.flops_convention or '')} · leenet {esc(results.leenet_version or '')}"
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>LEENet · {esc(results.dataset)}"
            f"</title><style>{CSS}{GALLERY_CSS}</style></head><body>{''.join(sections)}<footer>{footer}</footer></body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


CSS = """
body{font:15px/1.5 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1c2833;max-width:1200px;
margin:2em auto;padding:0 1.5em} h1{font-size:1.7em;margin-bottom:.2em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #d5d8dc} .facts,.note,.card .sub{color:#566573}
.cards{display:flex;flex-wrap:wrap;gap:1em;margin:1.2em 0} .card .sub{font-size:.85em}
.card{background:#f4f6f7;border-left:4px solid #c0392b;padding:.7em 1em;min-width:11em;max-width:28em}
.card .label{font-size:.8em;text-transform:uppercase;color:#566573} .card .value{font-size:1.6em;font-weight:600}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums} th{background:#f4f6f7}
th,td{padding:.3em .8em;border-bottom:1px solid #e5e8e8;text-align:right} th:first-child,td:first-child{text-align:left}
img{max-width:100%;display:block;margin:.8em 0} summary{cursor:pointer;color:#2874a6}
pre{background:#f4f6f7;padding:1em;overflow:auto;font-size:.85em} footer{margin-top:3em;color:#909497;font-size:.8em}
"""
