"""LEENet: early-exit networks with a learned exit policy.

Everything a user needs is importable from here; ``__all__`` is the public API::

    from leenet import attach_exits, train_heads, collect_outputs, fit_gates, run, RunConfig

A name is imported from its module when first used (PEP 562), so ``import leenet`` and the
``leenet`` command start at once and load torch only for what needs it; :data:`_EXPORTS` says
where each name lives, and type checkers read the same imports below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from leenet.version import __version__

if TYPE_CHECKING:
    from leenet.backbones import BACKBONES, backbone_names, build_backbone, get_backbone_info
    from leenet.checkpoint import load_checkpoint, save_checkpoint
    from leenet.config import (
        DataConfig,
        GateConfig,
        GateTrainConfig,
        ModelConfig,
        RunConfig,
        TrainConfig,
        parse_alphas,
    )
    from leenet.data import dataset_names, load_dataset, make_loader
    from leenet.defaults import dataset_defaults, resolve
    from leenet.errors import CheckpointError, DataError, ExitPointError, LeenetError
    from leenet.evaluate import (
        Candidate,
        Evaluator,
        envelope_gap,
        find_budget,
        measure_wall_clock,
        operating_points,
        upper_envelope,
        versus_thresholds,
    )
    from leenet.export import export_int8, export_onnx
    from leenet.finetune import finetune_backbone
    from leenet.nn import (
        CostModel,
        ExitEnsemble,
        ExitNet,
        ExitOutputs,
        FeatureLayout,
        attach_exits,
        count_flops,
        describe_exit_points,
        ensemble_for,
        split_backbone,
        valid_exit_points,
    )
    from leenet.pipeline import run
    from leenet.policy import (
        CachedOutputs,
        GateFit,
        GateProblem,
        PolicyResult,
        budget_sweep,
        collect_outputs,
        confidence_scores,
        exit_losses,
        first_exit,
        fit_gate_sweep,
        fit_gates,
        gates_for_alpha,
        gates_for_budget,
        predictor_fit,
        set_gates,
        set_gates_by_share,
        summarize,
        train_gates,
    )
    from leenet.predict import predict_files
    from leenet.report import Results, read_results, summary_table, write_report, write_results
    from leenet.train import freeze_, train_classifier, train_heads

# module → the public names it defines (the imports above, as data)
_EXPORTS: dict[str, tuple[str, ...]] = {
    "leenet.backbones": ("BACKBONES", "backbone_names", "build_backbone", "get_backbone_info"),
    "leenet.checkpoint": ("load_checkpoint", "save_checkpoint"),
    "leenet.config": ("DataConfig", "GateConfig", "GateTrainConfig", "ModelConfig", "RunConfig", "TrainConfig",
                      "parse_alphas"),
    "leenet.data": ("dataset_names", "load_dataset", "make_loader"),
    "leenet.defaults": ("dataset_defaults", "resolve"),
    "leenet.errors": ("CheckpointError", "DataError", "ExitPointError", "LeenetError"),
    "leenet.evaluate": ("Candidate", "Evaluator", "envelope_gap", "find_budget", "measure_wall_clock",
                        "operating_points", "upper_envelope", "versus_thresholds"),
    "leenet.export": ("export_int8", "export_onnx"),
    "leenet.finetune": ("finetune_backbone",),
    "leenet.nn": ("CostModel", "ExitEnsemble", "ExitNet", "ExitOutputs", "FeatureLayout", "attach_exits", "count_flops",
                  "describe_exit_points", "ensemble_for", "split_backbone", "valid_exit_points"),
    "leenet.pipeline": ("run",),
    "leenet.policy": ("CachedOutputs", "GateFit", "GateProblem", "PolicyResult", "budget_sweep", "collect_outputs",
                      "confidence_scores", "exit_losses", "first_exit", "fit_gate_sweep", "fit_gates",
                      "gates_for_alpha", "gates_for_budget", "predictor_fit", "set_gates", "set_gates_by_share",
                      "summarize", "train_gates"),
    "leenet.predict": ("predict_files",),
    "leenet.report": ("Results", "read_results", "summary_table", "write_report", "write_results"),
    "leenet.train": ("freeze_", "train_classifier", "train_heads"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "BACKBONES", "CachedOutputs", "Candidate", "CheckpointError", "CostModel", "DataConfig", "DataError", "Evaluator",
    "ExitEnsemble", "ExitNet", "ExitOutputs", "ExitPointError", "FeatureLayout", "GateConfig", "GateFit", "GateProblem",
    "GateTrainConfig", "LeenetError", "ModelConfig", "PolicyResult", "Results", "RunConfig", "TrainConfig",
    "__version__", "attach_exits", "backbone_names", "budget_sweep", "build_backbone", "collect_outputs",
    "confidence_scores", "count_flops", "dataset_defaults", "dataset_names", "describe_exit_points", "ensemble_for",
    "envelope_gap", "exit_losses", "export_int8", "export_onnx", "finetune_backbone", "find_budget", "first_exit",
    "fit_gate_sweep", "fit_gates", "freeze_",
    "gates_for_alpha", "gates_for_budget", "get_backbone_info", "load_checkpoint", "load_dataset", "make_loader",
    "measure_wall_clock", "operating_points", "parse_alphas", "predict_files", "predictor_fit", "read_results",
    "resolve", "run", "save_checkpoint", "set_gates", "set_gates_by_share", "split_backbone", "summarize",
    "summary_table", "train_classifier", "train_gates", "train_heads", "upper_envelope", "valid_exit_points",
    "versus_thresholds", "write_report", "write_results",
]


def __getattr__(name: str):
    """``leenet.NAME``: import NAME's module on first use and keep the name here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'leenet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
