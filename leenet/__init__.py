"""LEENet: early-exit networks with a learned exit policy.

Everything a user needs is importable from here; ``__all__`` is the public API::

    from leenet import attach_exits, train_heads, collect_outputs, fit_gates, run, RunConfig
"""

from leenet.backbones import BACKBONES, backbone_names, build_backbone, get_backbone_info
from leenet.checkpoint import load_checkpoint, save_checkpoint
from leenet.config import DataConfig, GateConfig, GateTrainConfig, ModelConfig, RunConfig, TrainConfig, parse_alphas
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
from leenet.export import export_onnx
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
from leenet.version import __version__

__all__ = [
    "BACKBONES", "CachedOutputs", "Candidate", "CheckpointError", "CostModel", "DataConfig", "DataError", "Evaluator",
    "ExitEnsemble", "ExitNet", "ExitOutputs", "ExitPointError", "FeatureLayout", "GateConfig", "GateFit", "GateProblem",
    "GateTrainConfig", "LeenetError", "ModelConfig", "PolicyResult", "Results", "RunConfig", "TrainConfig",
    "__version__", "attach_exits", "backbone_names", "budget_sweep", "build_backbone", "collect_outputs",
    "confidence_scores", "count_flops", "dataset_defaults", "dataset_names", "describe_exit_points", "ensemble_for",
    "envelope_gap",
    "exit_losses", "export_onnx", "finetune_backbone", "find_budget", "first_exit", "fit_gate_sweep", "fit_gates", "freeze_",
    "gates_for_alpha", "gates_for_budget", "get_backbone_info", "load_checkpoint", "load_dataset", "make_loader",
    "measure_wall_clock", "operating_points", "parse_alphas", "predict_files", "predictor_fit", "read_results",
    "resolve", "run", "save_checkpoint", "set_gates", "set_gates_by_share", "split_backbone", "summarize",
    "summary_table", "train_classifier", "train_gates", "train_heads", "upper_envelope", "valid_exit_points",
    "versus_thresholds", "write_report", "write_results",
]
