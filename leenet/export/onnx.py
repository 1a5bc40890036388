"""Staged ONNX export: one graph per stage, with its exit head and gate, plus the manifest.

A routed network cannot be one graph (a graph decides for the whole batch), so stage ``i``
becomes a graph ``x [, prev_logits] → features, logits, exit_prob`` and the runtime
(:class:`leenet_runtime.ExitRunner`) compacts the batch between graphs.

When an exit reads the heads before it (a cascade or an ensemble, :mod:`leenet.nn.combine`) the
graph of exit ``i > 0`` also takes the earlier heads' own logits ``raw_logits`` (B, i, K) and,
with an ensemble, gives its head's own ``head_logits`` (B, K) beside the exit's combined
``logits``; the final graph takes ``raw_logits`` (B, E-1, K) when the ensemble covers it.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torch.onnx import symbolic_helper

from leenet.errors import LeenetError, brief
from leenet.export.metadata import default_preprocessing, load_run
from leenet.nn.model import ExitNet
from leenet.version import __version__
from leenet_runtime.manifest import (
    EXIT_PROB,
    FEATURES,
    FORMAT,
    HEAD_LOGITS,
    INPUT,
    LOGITS,
    MANIFEST_NAME,
    PREV_LOGITS,
    RAW_LOGITS,
    ExitEntry,
    ExportError,
    Manifest,
    Preprocessing,
    read_manifest,
    version_for,
    write_manifest,
)

DEFAULT_OPSET = 17
_CHECK_ATOL = 1e-3  # largest |torch - onnxruntime| accepted on the example batch at export


class StageGraph(nn.Module):
    """Stage ``i`` of an ExitNet with what runs right after it: the graph one ONNX file holds.

    Args:
        net: the network (eval mode).
        index: the stage.
        head: compute this exit's logits (an enabled gate needs them, here or later).
        gate: compute this exit's probability (the gate is enabled).
    """

    def __init__(self, net: ExitNet, index: int, *, head: bool, gate: bool) -> None:
        super().__init__()
        self.net = net  # its exit_output, final_output and gate_logit: the graph computes what routing does
        self.index = index
        self.head, self.gate = head, gate  # flags, not modules: the parameters are reached through net alone
        self.reads_history = gate and net.gate_config.history and index > 0
        self.last = index == net.num_exits - 1
        # linked exits (leenet.nn.combine): the earlier heads' own logits in, this head's own out beside
        # the exit's combined ones (an ensemble); the final graph reads them when the ensemble covers it
        runs_head = net.final_reads_heads if self.last else head
        self.reads_raw = net.linked and index > 0 and runs_head
        self.gives_raw = not self.last and head and net.ensemble is not None  # else the exit's logits are the head's

    @property
    def input_names(self) -> tuple[str, ...]:
        names = (INPUT, PREV_LOGITS) if self.reads_history else (INPUT,)
        return (*names, RAW_LOGITS) if self.reads_raw else names

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.last:
            return (LOGITS,)
        if not self.head:
            return (FEATURES,)
        names = (FEATURES, LOGITS, EXIT_PROB) if self.gate else (FEATURES, LOGITS)
        return (*names, HEAD_LOGITS) if self.gives_raw else names

    def forward(self, x: Tensor, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """x (B, ...) [, prev_logits (B, i, K)] [, raw_logits (B, i, K)] → features [, logits (B, K)
        [, exit_prob (B,)] [, head_logits (B, K)]], as named by :attr:`input_names` and :attr:`output_names`.

        The last stage returns the final exit's logits (B, K) only: the backbone's, or with an
        ensemble over the final exit, combined with ``raw_logits`` (B, E-1, K).
        """
        feeds = dict(zip(self.input_names[1:], inputs))
        raw = feeds.get(RAW_LOGITS)
        h = self.net.stages[self.index](x)
        if self.last:
            return self.net.final_output(h, raw)
        if not self.head:
            return h
        logits, raw = self.net.exit_output(self.index, h, raw)
        outs = (h, logits)
        if self.gate:
            prev = feeds[PREV_LOGITS] if self.reads_history else logits[:, None, :][:, :0]  # (B, 0, K): unused
            outs = (*outs, torch.sigmoid(self.net.gate_logit(self.index, h, logits, prev)))
        return (*outs, raw[:, -1]) if self.gives_raw else outs


def export_onnx(source: str | Path | ExitNet, out_dir: str | Path, *, opset: int = DEFAULT_OPSET,
                class_names: list[str] | None = None, preprocessing: Preprocessing | None = None) -> Path:
    """Write one ONNX graph per stage and ``manifest.json`` into ``out_dir``.

    Args:
        source: a run directory (or its ``model.pt``) from ``leenet run``, or an ExitNet.
        out_dir: created if missing; must be empty or hold an earlier export (replaced).
        opset: ONNX opset of the graphs.
        class_names: overrides the run's class names (an ExitNet's default: "0", "1", ...).
        preprocessing: overrides the run's preprocessing (an ExitNet's default: stretch to
            its input size, 8-bit pixels scaled to [0, 1], no normalization).

    Returns:
        The path of the written ``manifest.json``.

    Raises:
        LeenetError: the onnx package is missing, no checkpoint in the run directory, a
            network without an input shape, preprocessing of another shape, an output directory
            holding other files, or a graph that does not export or disagrees with torch (its
            files are then removed).
    """
    if importlib.util.find_spec("onnx") is None:  # torch.onnx.export writes through it
        raise LeenetError("ONNX export needs the onnx package: pip install onnx")
    if isinstance(source, ExitNet):
        net, names, prep = source, class_names, preprocessing or default_preprocessing(_shape(source))
    else:
        net, prep, run_names = load_run(source)
        names, prep = class_names or list(run_names), preprocessing or prep
    net = copy.deepcopy(net).float().cpu().eval()
    example = torch.randn(2, *_shape(net), generator=torch.Generator().manual_seed(0))
    num_classes = _num_classes(net, example)
    names = names or [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise LeenetError(f"{len(names)} class names for a network with {num_classes} classes: "
                          "pass one name per class")
    if (prep.channels, *prep.image_size) != _shape(net):
        raise LeenetError(f"the preprocessing makes {(prep.channels, *prep.image_size)} images but the network "
                          f"reads {_shape(net)}: pass preprocessing= with the network's channels and image size")
    out = _prepare_dir(Path(out_dir))
    try:
        exits = _export_graphs(net, _stage_graphs(net), example, out, opset)
    except LeenetError:
        for path in out.glob("stage*.onnx"):  # no half export left behind to block the next one
            path.unlink()
        raise
    version = version_for(linked=net.linked, final_heads=net.final_reads_heads)  # 1 unless linked: every runtime
    manifest = Manifest(
        format=FORMAT, version=version, leenet_version=__version__, opset=opset,
        input_shape=_shape(net), dtype="float32", preprocessing=prep, class_names=tuple(names),
        threshold=float(net.threshold), gate_history=bool(net.gate_config.history),
        backbone_flops=int(net.backbone_flops), exits=tuple(exits), files={},
        linked=net.linked, final_heads=net.final_reads_heads,
    )
    return write_manifest(out, manifest)


def _shape(net: ExitNet) -> tuple[int, ...]:
    if net.input_shape is None:
        raise LeenetError("the network has no input shape, so its graphs cannot be sized: build it with "
                          "attach_exits(..., input_shape=(C, H, W))")
    return tuple(net.input_shape)


def _num_classes(net: ExitNet, example: Tensor) -> int:
    with torch.no_grad():
        return int(net.forward_all(example).logits.shape[-1])


def _prepare_dir(out: Path) -> Path:
    """``out``, created; an earlier export in it is removed, any other file is refused."""
    if out.exists() and not out.is_dir():
        raise LeenetError(f"{out} is a file: pass a directory for the exported graphs")
    out.mkdir(parents=True, exist_ok=True)
    present = {p.name for p in out.iterdir()}
    if not present:
        return out
    try:
        old = read_manifest(out, verify=False) if MANIFEST_NAME in present else None
    except ExportError as exc:
        raise LeenetError(f"{out} holds an unreadable earlier export ({exc}): export into a new directory") from None
    ours = set(old.files) | {MANIFEST_NAME} if old is not None else set()
    if present - ours:
        raise LeenetError(f"{out} holds other files ({', '.join(sorted(present - ours)[:3])}): "
                          "export into an empty or new directory")
    for name in present:
        (out / name).unlink()
    return out


def _stage_graphs(net: ExitNet) -> list[StageGraph]:
    enabled, needed = net.exit_plan()
    last = net.num_exits - 1
    # in eval mode: torch.onnx.export restores each graph's mode after exporting it, and they share net
    return [StageGraph(net, i, head=i < last and needed[i], gate=i < last and enabled[i]).eval()
            for i in range(net.num_exits)]


@torch.no_grad()
def _export_graphs(net: ExitNet, graphs: list[StageGraph], example: Tensor, out: Path,
                   opset: int) -> list[ExitEntry]:
    """Export each stage graph, check it against torch on ``example``, and describe it."""
    costs = net.routed_cost().tolist()
    entries, x = [], example
    prev = raw = None  # the earlier exits' logits (gate history), the earlier heads' own (linked exits)
    for i, graph in enumerate(graphs):
        known = {INPUT: x, PREV_LOGITS: prev, RAW_LOGITS: raw}
        args = tuple(known[name] for name in graph.input_names)
        expected = graph(*args)
        expected = expected if isinstance(expected, tuple) else (expected,)
        file = f"stage{i}.onnx"
        _export_one(graph, args, out / file, opset)
        _check_graph(out / file, graph, args, expected)
        outs = dict(zip(graph.output_names, expected))
        if not graph.last:
            x = outs[FEATURES]
        if LOGITS in outs and not graph.last:
            logits = outs[LOGITS][:, None]  # (B, 1, K)
            prev = logits if prev is None else torch.cat([prev, logits], dim=1)
            own = outs.get(HEAD_LOGITS, outs[LOGITS])[:, None]
            raw = own if raw is None else torch.cat([raw, own], dim=1)
        entries.append(ExitEntry(
            name=net.exit_names[i], cost=float(costs[i]), enabled=graph.last or graph.gate,
            head=graph.last or graph.head, graph=file,
            inputs=graph.input_names, outputs=graph.output_names))
    return entries


@symbolic_helper.parse_args("v", "v", "i")
def _vecdot_opset9(g, x, y, dim: int):
    return g.op("ReduceSum", g.op("Mul", x, y), axes_i=[dim], keepdims_i=0)


@symbolic_helper.parse_args("v", "v", "i")
def _vecdot_opset13(g, x, y, dim: int):  # ReduceSum reads its axes as an input from opset 13 on
    return g.op("ReduceSum", g.op("Mul", x, y), g.op("Constant", value_t=torch.tensor([dim])), keepdims_i=0)


def _register_symbolics() -> None:
    """Teach the TorchScript exporter the operators LEENet's gates use that it lacks (real tensors only).

    ``torch.linalg.vecdot`` (the gates' entropy, :mod:`leenet.nn.gates`) is Mul + ReduceSum.
    """
    torch.onnx.register_custom_op_symbolic("aten::linalg_vecdot", _vecdot_opset9, 9)
    torch.onnx.register_custom_op_symbolic("aten::linalg_vecdot", _vecdot_opset13, 13)


def _export_one(graph: StageGraph, args: tuple[Tensor, ...], path: Path, opset: int) -> None:
    _register_symbolics()
    inputs, outputs = graph.input_names, graph.output_names
    axes = {name: {0: "batch"} for name in (*inputs, *outputs)}
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, str(path), input_names=list(inputs), output_names=list(outputs),
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    except Exception as exc:  # torch raises many types for unsupported operators
        raise LeenetError(f"stage {path.stem} does not export to ONNX opset {opset} ({brief(exc)}): try "
                          "another --opset, or a backbone without the unsupported operator") from None


def _check_graph(path: Path, graph: StageGraph, args: tuple[Tensor, ...], expected: tuple[Tensor, ...]) -> None:
    """Refuse a graph whose outputs on the example batch differ from torch's."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: a.numpy() for name, a in zip(graph.input_names, args)}
    got = session.run(None, feeds)
    for want, have in zip(expected, got):
        err = float(np.abs(want.numpy() - have).max()) if want.numel() else 0.0
        if not err <= _CHECK_ATOL:
            raise LeenetError(f"the exported {path.name} differs from torch by {err:.2g} on a test batch: "
                              "the backbone uses an operator ONNX computes differently; report it")
