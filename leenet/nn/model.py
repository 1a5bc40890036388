"""ExitNet: a backbone cut into stages, with an exit head and a gate after each early stage;
:func:`attach_exits` builds a costed one from a backbone in one call."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from leenet.config import GateConfig
from leenet.errors import LeenetError, brief
from leenet.nn.cost import exit_costs, heads_needed, routed_costs
from leenet.nn.gates import enabled_flags, gate_features, make_gates
from leenet.nn.heads import FeatureLayout, global_pool, make_head
from leenet.nn.split import split_backbone


@dataclass
class ExitOutputs:
    """Everything :meth:`ExitNet.forward_all` computes for a batch.

    Attributes:
        logits: (B, E, C) logits of every exit; the last is the backbone's own classifier.
        gate_p: (B, E-1) each gate's probability of exiting at its exit.
        pooled: E-1 tensors (B, D_i), globally pooled features at each early exit.
    """

    logits: Tensor
    gate_p: Tensor
    pooled: list[Tensor]


class ExitNet(nn.Module):
    """A multi-exit network with a learned, per-sample exit policy.

    ``stages[i]`` maps the previous stage's output to the next; the last stage returns the
    backbone's logits. ``heads[i]`` and ``gates[i]`` sit after ``stages[i]`` for every
    stage but the last. A sample leaves at the first exit whose gate probability is at least
    ``threshold``; samples no gate lets out leave at the final exit.

    Args:
        stages: E modules; composed in order they are the backbone.
        heads: E-1 modules, features → logits (B, C).
        gates: E-1 :class:`~leenet.heads.Gate` modules.
        exit_names: E names, one per exit (the last is usually ``"final"``).
        gate_config: the inputs the gates were built for.
        threshold: gate probability at or above which a sample exits.
        input_shape: one image's shape ``(C, H, W)``, the size the exits were costed and the
            gates calibrated at; when given, batches of another shape are refused.
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        heads: Sequence[nn.Module],
        gates: Sequence[nn.Module],
        *,
        exit_names: Sequence[str],
        gate_config: GateConfig,
        threshold: float = 0.5,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not (len(stages) - 1 == len(heads) == len(gates) == len(exit_names) - 1):
            raise LeenetError(
                f"an ExitNet needs E stages, E-1 heads, E-1 gates and E exit names; got "
                f"{len(stages)}, {len(heads)}, {len(gates)}, {len(exit_names)}"
            )
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        self.gates = nn.ModuleList(gates)
        self.exit_names = list(exit_names)
        self.gate_config = gate_config
        if not 0.0 < threshold <= 1.0:
            raise LeenetError(f"the gate decision threshold must be in (0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.input_shape = None if input_shape is None else tuple(int(n) for n in input_shape)
        # Relative cost of each exit with every head run, and of each early head and gate
        # (see leenet.cost); filled in by the builder.
        self.register_buffer("cost", torch.zeros(len(stages)))
        self.register_buffer("head_cost", torch.zeros(len(heads)))
        self.register_buffer("gate_cost", torch.zeros(len(heads)))
        # FLOPs of the plain backbone for one image; cost * backbone_flops = exit FLOPs.
        self.register_buffer("backbone_flops", torch.zeros((), dtype=torch.float64))

    @property
    def num_exits(self) -> int:
        return len(self.stages)

    def enabled_exits(self, gates: Sequence[nn.Module] | None = None) -> Tensor:
        """(E-1,) bool: which early exits' gates (``self.gates`` by default) can fire."""
        return enabled_flags(self.gates if gates is None else gates).to(self.cost.device)

    def routed_cost(self, gates: Sequence[nn.Module] | None = None) -> Tensor:
        """(E,) relative cost of each exit of the routed network with ``gates`` (default: its own).

        Heads of disabled exits that no later gate reads are not run, so with every gate
        disabled the final exit costs exactly the backbone.
        """
        return routed_costs(self.cost, self.head_cost, self.gate_cost, self.enabled_exits(gates),
                            self.gate_config.history)

    @classmethod
    def from_stages(
        cls,
        stages: Sequence[nn.Module],
        *,
        num_classes: int,
        example_input: Tensor,
        head: str = "pool",
        gate_config: GateConfig | None = None,
        exit_names: Sequence[str] | None = None,
        threshold: float = 0.5,
        layout: FeatureLayout | str | Sequence[FeatureLayout | str] | None = None,
    ) -> ExitNet:
        """Attach heads and gates sized from one forward pass of ``example_input`` (1, C, H, W).

        ``layout`` says how the features at the exits are laid out (see
        :class:`~leenet.nn.heads.FeatureLayout`): one per exit; or one for the backbone, used at
        every exit whose features have its rank; or None to detect it (maps are channels-last
        when the next stage's first layer normalizes or multiplies their last axis).
        """
        gate_config = gate_config or GateConfig()
        shapes, next_last = _stage_output_shapes(stages, example_input)
        if shapes[-1] != (num_classes,):
            raise LeenetError(
                f"the last stage gives outputs of shape {shapes[-1]} per image, not {num_classes} class "
                f"logits: pass the backbone's own class count as num_classes"
            )
        layouts = _exit_layouts(layout, shapes[:-1], next_last)
        heads = [make_head(head, shape, num_classes, lay) for shape, lay in zip(shapes[:-1], layouts)]
        pooled_dims = [lay.channels(shape) for shape, lay in zip(shapes[:-1], layouts)]
        gates = make_gates(len(heads), pooled_dims, gate_config, num_classes)
        names = list(exit_names) if exit_names else [f"exit{i}" for i in range(len(heads))] + ["final"]
        return cls(stages, heads, gates, exit_names=names, gate_config=gate_config, threshold=threshold,
                   input_shape=example_input.shape[1:])

    def check_input(self, x: Tensor) -> None:
        """Refuse, in one line, a batch this network cannot route (metadata only: no device sync)."""
        if not isinstance(x, Tensor):
            raise LeenetError(f"expected a tensor batch of images, got {type(x).__name__}")
        expected = self.input_shape
        if expected is not None and tuple(x.shape[1:]) != expected:
            want = ", ".join(str(n) for n in expected)
            raise LeenetError(
                f"expected a batch of shape (B, {want}), the images this network was built and calibrated "
                f"for, got {tuple(x.shape)}: resize or convert the images to that shape (one image needs a batch dimension)"
            )
        param = next(self.parameters(), None)
        if param is not None and x.dtype != param.dtype:
            raise LeenetError(
                f"the images are {x.dtype} but the network computes in {param.dtype}: pass x.to({param.dtype}) "
                f"(scaled like the training images)"
            )

    def forward_all(self, x: Tensor) -> ExitOutputs:
        """Run every stage, head and gate on the whole batch (training, caching, sweeps)."""
        self.check_input(x)
        logits, pooled, gate_p = [], [], []
        h = x
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i == self.num_exits - 1:
                logits.append(h)
                break
            logits.append(self.heads[i](h))
            pooled.append(global_pool(h))
        stacked = torch.stack(logits, dim=1)  # (B, E, C)
        for i, gate in enumerate(self.gates):
            inputs = gate_features(stacked[:, i], stacked[:, :i], pooled[i], self.gate_config)
            gate_p.append(gate(inputs))
        gate_p_t = torch.stack(gate_p, dim=1) if gate_p else stacked.new_zeros(x.shape[0], 0)
        return ExitOutputs(stacked, gate_p_t, pooled)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Route each sample of the batch on its own.

        After each stage only the still-active rows go through the head and gate; the rows
        that leave are written into a preallocated output and dropped from the batch. A batch
        of one takes :meth:`_route_one`: one decision per exit and no bookkeeping.

        Exits whose gate is disabled are passed by: their head runs only when a later gate
        reads its logits (gate history), and no sample leaves there.

        Returns:
            logits (B, C) from each sample's exit, and exit_index (B,) int64 in [0, E).
        """
        self.check_input(x)
        enabled, run_head = self._exit_plan()
        if x.shape[0] == 1:
            return self._route_one(x, enabled, run_head)
        batch = x.shape[0]
        exit_index = torch.full((batch,), self.num_exits - 1, dtype=torch.long, device=x.device)
        active: Tensor | None = None  # rows of the batch still running; None while all are
        out: Tensor | None = None
        prev: Tensor | None = None  # (B_active, i, C) earlier exits' logits, for gate history
        h = x
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i == self.num_exits - 1:
                if active is None:  # nobody left early: the final logits are the output
                    return (h if out is None else h.to(out.dtype)), exit_index
                out[active] = h.to(out.dtype)
                break
            if not run_head[i]:
                continue
            logits = self.heads[i](h)  # (B_active, C)
            if prev is None:
                prev = logits.new_empty(logits.shape[0], 0, logits.shape[-1])
            if enabled[i]:
                leave = torch.sigmoid(self._gate_logit(i, h, logits, prev)) >= self.threshold  # (B_active,)
                # This exit's only device->host sync: the batch shrinks to a data-dependent size.
                n_leave, n_active = int(leave.sum()), logits.shape[0]
                if n_leave == n_active and active is None:  # everyone leaves here, together
                    return logits, exit_index.fill_(i)
                if n_leave:
                    if out is None:
                        out = logits.new_empty(batch, logits.shape[-1])
                    if active is None:
                        active = torch.arange(batch, device=x.device)
                    # leavers first (stable); every gather below uses indices, not masks
                    order = torch.sort(leave.to(torch.uint8), descending=True, stable=True).indices
                    go, stay = order[:n_leave], order[n_leave:]
                    out[active[go]] = logits[go]
                    exit_index[active[go]] = i
                    if n_leave == n_active:  # nothing left to run
                        return out, exit_index
                    active, h, logits, prev = active[stay], h[stay], logits[stay], prev[stay]
            if self.gate_config.history:
                prev = torch.cat([prev, logits[:, None]], dim=1)
        return out, exit_index

    def _exit_plan(self) -> tuple[list[bool], list[bool]]:
        """Which gates can fire and which heads must run, as host lists: one device->host read."""
        if not len(self.gates):
            return [], []
        enabled = torch.stack([gate.enabled for gate in self.gates]).cpu()
        return enabled.tolist(), heads_needed(enabled, self.gate_config.history).tolist()

    def _gate_logit(self, i: int, h: Tensor, logits: Tensor, prev: Tensor) -> Tensor:
        """(B,) pre-sigmoid score of gate ``i`` on the stage output ``h`` and head logits."""
        pooled = global_pool(h) if self.gate_config.pooled else None
        return self.gates[i].logit(gate_features(logits, prev, pooled, self.gate_config))

    def _route_one(self, x: Tensor, enabled: list[bool], run_head: list[bool]) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for a batch of one: a scalar decision per enabled exit, nothing to compact."""
        prev: Tensor | None = None  # (1, i, C) earlier exits' logits, for gate history
        h = x
        for i, stage in enumerate(self.stages[:-1]):
            h = stage(h)
            if not run_head[i]:
                continue
            logits = self.heads[i](h)  # (1, C)
            if prev is None:
                prev = logits.new_empty(1, 0, logits.shape[-1])
            # the same decision as a batch's, in the same dtype: one device->host sync
            if enabled[i] and bool(torch.sigmoid(self._gate_logit(i, h, logits, prev)) >= self.threshold):
                return logits, torch.full((1,), i, dtype=torch.long, device=x.device)
            if self.gate_config.history:
                prev = torch.cat([prev, logits[:, None]], dim=1)
        h = self.stages[-1](h)
        return h, torch.full((1,), self.num_exits - 1, dtype=torch.long, device=x.device)

    def backbone_state_dict(self) -> dict[str, Tensor]:
        """The plain backbone's state dict (stage module names are the backbone's own).

        Raises:
            LeenetError: two stages hold different tensors under one name, as hand-cut
                ``nn.Sequential`` stages do (``0.weight`` in each): the backbone's own names
                are only known for a backbone split by :func:`leenet.split.split_backbone`.
        """
        state: dict[str, Tensor] = {}
        for stage in self.stages:
            for key, value in stage.state_dict().items():
                if key in state and state[key].data_ptr() != value.data_ptr():
                    raise LeenetError(
                        f"stages hold different tensors under the same name {key!r}, so the plain "
                        "backbone's state dict is unknown: build the network from the backbone "
                        "module and its exit points, or save net.stages.state_dict() instead"
                    )
                state[key] = value
        return state


@torch.no_grad()
def _stage_output_shapes(
    stages: Sequence[nn.Module], example_input: Tensor
) -> tuple[list[tuple[int, ...]], list[int | None]]:
    """Per-sample output shape of each stage for a one-sample input, and for each stage the
    width of the last axis its first layer reads, when that layer is a LayerNorm or Linear
    (None otherwise): channels-last evidence for the features entering it."""
    modes = [s.training for s in stages]
    shapes: list[tuple[int, ...]] = []
    first: list[int | None] = []
    current: dict[str, bool] = {"seen": False}

    def note(module: nn.Module, _args) -> None:
        if current["seen"] or not _reads_channels(module):
            return
        current["seen"] = True
        first[-1] = _last_axis_width(module)

    modules = {id(m): m for s in stages for m in s.modules()}.values()
    hooks = [m.register_forward_pre_hook(note) for m in modules]
    h = example_input
    try:
        for stage in stages:
            stage.eval()
            first.append(None)
            current["seen"] = False
            h = stage(h)
            shapes.append(tuple(h.shape[1:]))
    except RuntimeError as exc:
        raise LeenetError(
            f"the backbone failed on an input of shape {tuple(example_input.shape)} ({brief(exc)}): "
            "check the image size and channel count the model expects"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
        for stage, mode in zip(stages, modes):
            stage.train(mode)
    return shapes, first


_CHANNEL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def _reads_channels(module: nn.Module) -> bool:
    return isinstance(module, _CHANNEL_LAYERS)


def _last_axis_width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return module.normalized_shape[0]
    return None


def _exit_layouts(
    layout: FeatureLayout | str | Sequence[FeatureLayout | str] | None,
    shapes: Sequence[tuple[int, ...]],
    next_last: Sequence[int | None],
) -> list[FeatureLayout]:
    """The layout of each early exit's features (see :meth:`ExitNet.from_stages`)."""
    if isinstance(layout, Sequence) and not isinstance(layout, str):
        if len(layout) != len(shapes):
            raise LeenetError(f"{len(shapes)} exits need {len(shapes)} layouts, got {len(layout)}: "
                              "give one per exit, or one for the backbone")
        return [FeatureLayout.of(lay) for lay in layout]
    given = None if layout is None else FeatureLayout.of(layout)
    layouts = []
    for shape, width in zip(shapes, next_last[1:]):
        guess = FeatureLayout.guess(shape)
        if given is not None and len(shape) == given.ndim:
            guess = given
        elif given is None and guess.kind == "nchw" and width == shape[-1] != shape[0]:
            guess = FeatureLayout("nhwc")
        layouts.append(guess)
    return layouts


def attach_exits(
    backbone: nn.Module | Sequence[nn.Module],
    exit_points: Sequence[str] | None = None,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    head: str = "pool",
    gate_config: GateConfig | None = None,
    threshold: float = 0.5,
) -> ExitNet:
    """Cut ``backbone`` at ``exit_points`` and attach a head and a gate after each cut.

    Args:
        backbone: a ``torch.fx``-traceable classifier, or an explicit list of stages whose
            composition is the classifier (then ``exit_points`` only names the exits).
        exit_points: module names to exit after, in execution order, e.g.
            ``["layer1", "layer2", "layer3"]``.
        input_shape: one image's shape ``(C, H, W)`` at the size the network will see;
            FLOPs are counted at this size.
        num_classes: number of classes of the backbone's classifier.
        head: ``"pool"``, ``"sdn"`` or ``"flatten"`` (see :func:`leenet.heads.make_head`).
        gate_config: what the gates see and their width.
        threshold: gate probability at or above which a sample exits.

    Returns:
        An ExitNet on the backbone's device with ``cost`` filled in; heads and gates untrained.
    """
    if isinstance(exit_points, str):
        raise LeenetError(f"exit_points is a list of module names, e.g. ['{exit_points}'], not a string")
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else ()
    if not shape or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in shape):
        raise LeenetError(f"input_shape is one image's shape as positive whole numbers, e.g. (3, 224, 224); "
                          f"got {input_shape!r}")
    shape = tuple(int(n) for n in shape)
    if isinstance(backbone, nn.Module):
        if not exit_points:
            raise LeenetError("give at least one exit point (a module name such as 'layer2')")
        stages = split_backbone(backbone, list(exit_points))
        names = [*exit_points, "final"]
    else:
        if isinstance(backbone, str) or not all(isinstance(m, nn.Module) for m in backbone):
            raise LeenetError("backbone must be an nn.Module or a list of nn.Module stages")
        stages = list(backbone)
        if len(stages) < 2:
            raise LeenetError("an explicit list of stages needs at least two stages (one early exit)")
        names = [*(exit_points or [f"stage{i}" for i in range(len(stages) - 1)]), "final"]
        if len(names) != len(stages):
            raise LeenetError(f"{len(stages)} stages need {len(stages) - 1} exit names, got {len(names) - 1}")
    param = next((p for s in stages for p in s.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(1, *shape, device=device)
    net = ExitNet.from_stages(
        stages, num_classes=num_classes, example_input=example, head=head,
        gate_config=gate_config, exit_names=names, threshold=threshold,
    ).to(device)
    costs = exit_costs(net, example)
    net.cost.copy_(costs.relative.to(net.cost))
    net.head_cost.copy_(costs.relative_heads.to(net.head_cost))
    net.gate_cost.copy_(costs.relative_gates.to(net.gate_cost))
    net.backbone_flops.fill_(costs.backbone_flops)
    return net
