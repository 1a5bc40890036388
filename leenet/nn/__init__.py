"""The multi-exit network: cutting a backbone into stages, exit heads, gates, costs."""

from leenet.nn.attach import attach_exits
from leenet.nn.combine import Cascade, ExitEnsemble, ensemble_for, fit_ensemble
from leenet.nn.cost import (
    FLOPS_CONVENTION,
    CostModel,
    ExitCosts,
    count_flops,
    exit_costs,
    heads_needed,
    math_attention,
    needed_heads,
    routed_costs,
)
from leenet.nn.gates import Gate, confidence_features, enabled_flags, gate_features, gate_input_dim, make_gates
from leenet.nn.heads import FeatureLayout, global_pool, make_head
from leenet.nn.model import ExitNet, ExitOutputs
from leenet.nn.split import cut_shapes, describe_exit_points, split_backbone, valid_exit_points

__all__ = [
    "Cascade", "ExitEnsemble", "ensemble_for", "fit_ensemble", "needed_heads",
    "CostModel", "ExitCosts", "ExitNet", "ExitOutputs", "FLOPS_CONVENTION", "FeatureLayout", "Gate", "attach_exits",
    "confidence_features", "count_flops", "cut_shapes", "describe_exit_points", "enabled_flags", "exit_costs",
    "gate_features", "gate_input_dim", "global_pool", "heads_needed", "make_gates", "make_head", "math_attention",
    "routed_costs", "split_backbone", "valid_exit_points",
]
