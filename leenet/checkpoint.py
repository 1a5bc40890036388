"""Versioned checkpoints: a plain dict of tensors and JSON-able config, loaded with ``weights_only=True``.

Version 3 describes the network itself (:func:`network_spec`: its exits, head kind, each
exit's feature layout, gate settings, input shape and, for a backbone made by
:func:`leenet.build_backbone`, its name), so ``save_checkpoint(path, net)`` needs nothing
else; ``arch`` is None for other backbones, which are passed again to :func:`load_checkpoint`
(a model, or the same explicit list of stages). Version 2 added every buffer of the network
(head and gate costs, each gate's ``enabled`` flag). Version 4 adds the heads' cascade and the
exits' ensemble (:mod:`leenet.nn.combine`). Older files are migrated on read by :func:`_migrate_v1`,
:func:`_migrate_v2` and :func:`_migrate_v3`, explicitly, rather than patched while loading a module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from leenet.backbones.registry import build_backbone
from leenet.backbones.weights import load_tensors
from leenet.config import CASCADE_KINDS, ENSEMBLE_KINDS, GateConfig, check_alpha
from leenet.errors import CheckpointError, LeenetError, brief
from leenet.files import replace_atomically
from leenet.nn.attach import attach_exits
from leenet.nn.combine import ExitEnsemble
from leenet.nn.heads import HEAD_TYPES, FeatureLayout
from leenet.nn.model import ExitNet

FORMAT = "leenet.exitnet"
VERSION = 4
_REQUIRED = ("arch", "exits", "num_classes", "input_shape", "head", "gate", "threshold", "layouts", "cascade",
             "ensemble")


def network_spec(net: ExitNet) -> dict:
    """What rebuilding ``net`` takes, read from the network (JSON-able; the keys of ``_REQUIRED``).

    Raises:
        LeenetError: ``net`` has heads LEENet did not make (no kind or layout to record).
    """
    heads = list(net.heads)
    if not all(isinstance(h, HEAD_TYPES) for h in heads) or len({h.kind for h in heads}) > 1:
        raise LeenetError("this network's heads were not made by attach_exits (or mix kinds): save its "
                          "state_dict() yourself, or build it with attach_exits")
    return {
        "arch": net.backbone_arch, "exits": net.exit_names[:-1],
        "num_classes": heads[0].fc.out_features if heads else None,
        "input_shape": list(net.input_shape) if net.input_shape is not None else None,
        "head": heads[0].kind if heads else "pool", "gate": dataclasses.asdict(net.gate_config),
        "threshold": net.threshold, "layouts": [h.layout.as_list() for h in heads],
        "cascade": "off" if net.cascade is None else net.cascade.kind,
        "ensemble": None if net.ensemble is None else {"kind": net.ensemble.kind, "final": net.ensemble.final},
    }


def save_checkpoint(
    path: str | Path, net: ExitNet, spec: Mapping | None = None, *,
    gate_bank: Mapping[float, nn.ModuleList] | None = None,
) -> Path:
    """Write ``net`` with what rebuilding it takes.

    Args:
        path: file to write (written to a temporary name, then renamed: never half-written).
        net: the network (its gates are the selected ones), made by :func:`attach_exits`.
        spec: optional JSON-able settings laid over :func:`network_spec` (``arch`` when the
            backbone did not come from :func:`leenet.build_backbone`); anything else
            (dataset, normalization, alpha) is kept as metadata.
        gate_bank: gates trained for other alphas, so a user can switch without retraining.
    """
    spec = {**network_spec(net), **(spec or {})}
    if spec["num_classes"] is None or spec["input_shape"] is None:
        raise LeenetError("save_checkpoint needs a network made by attach_exits (its input shape and "
                          "class count are unknown here): pass them in spec")
    try:  # the plain backbone's weights, under its own names, for use without LEENet
        backbone_state = {k: v.detach().cpu() for k, v in net.backbone_state_dict().items()}
    except LeenetError:  # hand-cut stages reuse names: the plain backbone's state dict is unknown
        backbone_state = None
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "backbone_state": backbone_state,
        "gate_bank": {
            repr(float(alpha)): {k: v.detach().cpu() for k, v in gates.state_dict().items()}
            for alpha, gates in (gate_bank or {}).items()
        },
    }
    return replace_atomically(path, lambda f: torch.save(payload, f))


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint dict without building anything."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: pass the model.pt of a finished run")
    payload = load_tensors(path, "checkpoint", "pass the model.pt of a finished run, or rerun `leenet run`")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a LEENet checkpoint (a plain state dict? load it as a backbone with --weights)"
        )
    if payload.get("version") == 1:
        payload = _migrate_v1(payload)
    if payload.get("version") == 2:
        payload = _migrate_v2(payload)
    if payload.get("version") == 3:
        payload = _migrate_v3(payload)
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}, this LEENet reads version {VERSION}: "
            "use the LEENet release that wrote it or rerun the pipeline"
        )
    spec = payload.get("spec")
    if not isinstance(spec, dict) or any(k not in spec for k in _REQUIRED):
        raise CheckpointError(f"{path} lacks part of its build spec: the file is damaged; rerun `leenet run`")
    if (not isinstance(payload.get("state_dict"), dict) or not isinstance(spec.get("gate"), dict)
            or not isinstance(payload.get("gate_bank", {}), dict)):
        raise CheckpointError(f"{path} lacks its weights or gate settings: the file is damaged; rerun `leenet run`")
    return payload


def load_checkpoint(
    path: str | Path, *, backbone: nn.Module | Sequence[nn.Module] | None = None, alpha: float | None = None,
    map_location: str | torch.device = "cpu",
) -> ExitNet:
    """Rebuild the ExitNet saved at ``path``.

    Args:
        path: a file written by :func:`save_checkpoint`.
        backbone: the architecture to rebuild on, for backbones :func:`leenet.build_backbone`
            did not make: the model, or the explicit list of stages the network was built
            from (random init is fine: the weights come from the file).
        alpha: pick the gates trained for this alpha from the file's gate bank instead of
            the selected ones.
        map_location: device for the returned network.
    """
    payload = read_checkpoint(path)
    spec = payload["spec"]
    if backbone is None:
        if spec["arch"] is None:
            raise CheckpointError(f"{path} was built on a backbone LEENet cannot rebuild by name: pass it "
                                  "again as load_checkpoint(path, backbone=model_or_list_of_stages)")
        backbone = build_backbone(spec["arch"], num_classes=spec["num_classes"], in_channels=spec["input_shape"][0],
                                  image_size=spec["input_shape"][-1])
    try:
        gate_config = GateConfig(**spec["gate"])
    except TypeError as exc:  # settings this version does not know
        raise CheckpointError(f"{path} has gate settings this LEENet cannot read ({exc}): rerun `leenet run`") from None
    ensemble = spec["ensemble"]
    if spec["cascade"] not in CASCADE_KINDS or not (
            ensemble is None or (isinstance(ensemble, dict) and ensemble.get("kind") in ENSEMBLE_KINDS[1:]
                                 and isinstance(ensemble.get("final"), bool))):
        raise CheckpointError(f"{path} has cascade or ensemble settings this LEENet cannot read: rerun `leenet run`")
    net = attach_exits(
        backbone, spec["exits"], input_shape=spec["input_shape"], num_classes=spec["num_classes"],
        head=spec["head"], gate_config=gate_config, threshold=spec["threshold"],
        layout=None if spec["layouts"] is None else [FeatureLayout.of(lay) for lay in spec["layouts"]],
        cascade=spec["cascade"],
    )
    if ensemble is not None:
        net.set_ensemble(ExitEnsemble(net.num_exits, spec["num_classes"], ensemble["kind"], ensemble["final"]))
    _load_strict(net, payload["state_dict"], path)
    if alpha is not None:
        bank = payload.get("gate_bank", {})
        key = repr(check_alpha(alpha))
        if key not in bank:
            known = ", ".join(sorted(bank, key=float)) or "none"
            raise CheckpointError(f"{path} has no gates for alpha={alpha} (it has: {known})")
        _load_strict(net.gates, bank[key], path)
    return net.to(map_location).eval()


def _load_strict(module: nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit the model it describes ({brief(exc)}): it was written for "
            "another backbone; pass the matching --arch/backbone"
        ) from None


def _migrate_v1(payload: dict) -> dict:
    """A version-1 checkpoint as version 2: buffers added after it was written get the values
    the network had then (nothing skippable: head and gate costs 0; every gate enabled)."""
    state, bank = payload.get("state_dict"), payload.get("gate_bank", {})
    if not isinstance(state, dict) or not isinstance(bank, dict):
        return payload  # damaged: read_checkpoint says so
    gates = sorted({int(k.split(".")[1]) for k in state if k.startswith("gates.") and k.split(".")[1].isdigit()})
    heads = len({k.split(".")[1] for k in state if k.startswith("heads.")})
    state = dict(state)
    for name in ("head_cost", "gate_cost"):
        state.setdefault(name, torch.zeros(heads))
    for i in gates:
        state.setdefault(f"gates.{i}.enabled", torch.ones((), dtype=torch.bool))
    bank = {alpha: {**gates_state, **{f"{i}.enabled": gates_state.get(f"{i}.enabled", torch.ones((), dtype=torch.bool))
                                      for i in gates}}
            for alpha, gates_state in bank.items() if isinstance(gates_state, dict)}
    return {**payload, "version": 2, "state_dict": state, "gate_bank": bank}



def _migrate_v2(payload: dict) -> dict:
    """A version-2 checkpoint as version 3: its exits' layouts are detected again when loaded
    (``layouts`` None), as version 2 did."""
    spec = payload.get("spec")
    if not isinstance(spec, dict):
        return payload  # damaged: read_checkpoint says so
    return {**payload, "version": 3, "spec": {**spec, "layouts": None}}


def _migrate_v3(payload: dict) -> dict:
    """A version-3 checkpoint as version 4: plain heads (no cascade) and no ensemble."""
    spec = payload.get("spec")
    if not isinstance(spec, dict):
        return payload  # damaged: read_checkpoint says so
    return {**payload, "version": 4, "spec": {**spec, "cascade": "off", "ensemble": None}}
