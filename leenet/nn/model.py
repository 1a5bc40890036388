"""ExitNet: a backbone cut into stages, with an exit head and a gate after each early stage
(:func:`leenet.nn.attach.attach_exits` builds a costed one from a backbone in one call)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from leenet.config import GateConfig
from leenet.errors import LeenetError
from leenet.nn.combine import Cascade, ExitEnsemble, make_cascade
from leenet.nn.cost import needed_heads, routed_costs
from leenet.nn.gates import enabled_flags, gate_features, make_gates
from leenet.nn.heads import FeatureLayout, exit_layouts, make_head
from leenet.nn.shapes import stage_output_shapes


@dataclass
class ExitOutputs:
    """Everything :meth:`ExitNet.forward_all` computes for a batch.

    Attributes:
        logits: (B, E, C) logits of every exit (combined by the network's ensemble, if it
            has one); without an ensemble the last is the backbone's own classifier.
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
        cascade: links from each head's logits to the next head's (see :mod:`leenet.nn.combine`).
        ensemble: each exit's output combined from the heads up to it; None = each head alone
            (set later with :meth:`set_ensemble`, once it is fit).
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
        cascade: Cascade | None = None,
        ensemble: ExitEnsemble | None = None,
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
        self.register_module("cascade", cascade)
        self.register_module("ensemble", None)
        self.set_ensemble(ensemble)
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

    @property
    def linked(self) -> bool:
        """Whether an exit's output reads the heads before it (a cascade or an ensemble)."""
        return self.cascade is not None or self.ensemble is not None

    @property
    def final_reads_heads(self) -> bool:
        """Whether the final exit's output reads every early head (an ensemble over it)."""
        return self.ensemble is not None and self.ensemble.final

    def set_ensemble(self, ensemble: ExitEnsemble | None) -> None:
        """Combine each exit's output from the heads up to it (None: each head alone)."""
        if ensemble is not None and ensemble.num_exits != self.num_exits:
            raise LeenetError(f"an ensemble over {ensemble.num_exits} exits cannot serve {self.num_exits}")
        if ensemble is not None:
            ensemble = ensemble.to(self.cost.device)
        self.ensemble = ensemble

    def enabled_exits(self, gates: Sequence[nn.Module] | None = None) -> Tensor:
        """(E-1,) bool: which early exits' gates (``self.gates`` by default) can fire."""
        return enabled_flags(self.gates if gates is None else gates).to(self.cost.device)

    def routed_cost(self, gates: Sequence[nn.Module] | None = None) -> Tensor:
        """(E,) relative cost of each exit of the routed network with ``gates`` (default: its own).

        Heads of disabled exits that no later gate reads are not run, so with every gate
        disabled the final exit costs exactly the backbone.
        """
        return routed_costs(self.cost, self.head_cost, self.gate_cost, self.enabled_exits(gates),
                            self.gate_config.history or self.linked, self.final_reads_heads)

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
        cascade: str = "off",
    ) -> ExitNet:
        """Attach heads and gates sized from one forward pass of ``example_input`` (1, C, H, W).

        ``layout`` says how the features at the exits are laid out (see
        :class:`~leenet.nn.heads.FeatureLayout`): one per exit; or one for the backbone, used at
        every exit whose features have its rank; or None to detect it (maps are channels-last
        when the next stage's first layer normalizes or multiplies their last axis).
        ``cascade``: "off", "detach" or "grad" (see :class:`~leenet.nn.combine.Cascade`).
        """
        gate_config = gate_config or GateConfig()
        shapes, next_last = stage_output_shapes(stages, example_input)
        if shapes[-1] != (num_classes,):
            raise LeenetError(
                f"the last stage gives outputs of shape {shapes[-1]} per image, not {num_classes} class "
                f"logits: pass the backbone's own class count as num_classes"
            )
        layouts = exit_layouts(layout, shapes[:-1], next_last[1:])
        heads = [make_head(head, shape, num_classes, lay) for shape, lay in zip(shapes[:-1], layouts)]
        pooled_dims = [lay.channels(shape) for shape, lay in zip(shapes[:-1], layouts)]
        gates = make_gates(len(heads), pooled_dims, gate_config, num_classes)
        names = list(exit_names) if exit_names else [f"exit{i}" for i in range(len(heads))] + ["final"]
        net = cls(stages, heads, gates, exit_names=names, gate_config=gate_config, threshold=threshold,
                  input_shape=example_input.shape[1:], cascade=make_cascade(cascade, len(heads), num_classes))
        net.backbone_arch = None  # set by attach_exits for a backbone from leenet.build_backbone
        return net

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
        # the first stage's first weight, found without walking every module (a batch of one pays for it)
        param = next(self.stages[0].parameters(), None)
        param = next(self.parameters(), None) if param is None else param
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
            logits.append(self.head_logits(i, h, logits[-1] if logits else None))
            pooled.append(self.heads[i].pool(h))  # over space or tokens, as the features are laid out
        stacked = torch.stack(logits, dim=1)  # (B, E, C)
        if self.ensemble is not None:
            stacked = self.ensemble(stacked)
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

        Exits whose gate is disabled are passed by: their head runs only when a later exit
        reads its logits (gate history, a cascade or an ensemble), and no sample leaves there.

        Returns:
            logits (B, C) from each sample's exit, and exit_index (B,) int64 in [0, E).
        """
        self.check_input(x)
        enabled, run_head = self.exit_plan()
        if not any(run_head):  # no gate can fire and no head is read: the plain backbone, nothing else
            h = x
            for stage in self.stages:
                h = stage(h)
            return h, torch.full((x.shape[0],), self.num_exits - 1, dtype=torch.long, device=x.device)
        if x.shape[0] == 1:
            return self._route_one(x, enabled, run_head)
        batch = x.shape[0]
        exit_index = torch.full((batch,), self.num_exits - 1, dtype=torch.long, device=x.device)
        active: Tensor | None = None  # rows of the batch still running; None while all are
        out: Tensor | None = None
        prev: Tensor | None = None  # (B_active, i, C) earlier exits' outputs, for gate history
        raw: Tensor | None = None  # (B_active, i, C) earlier heads' own logits, for a cascade or an ensemble
        h = x
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i == self.num_exits - 1:
                h = self.final_output(h, raw)
                if active is None:  # nobody left early: the final logits are the output
                    return (h if out is None else h.to(out.dtype)), exit_index
                out[active] = h.to(out.dtype)
                break
            if not run_head[i]:
                continue
            logits, raw = self.exit_output(i, h, raw)  # (B_active, C)
            if prev is None:
                prev = logits.new_empty(logits.shape[0], 0, logits.shape[-1])
            if enabled[i]:
                leave = torch.sigmoid(self.gate_logit(i, h, logits, prev)) >= self.threshold  # (B_active,)
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
                    rows = active[go]
                    out[rows] = logits[go]
                    exit_index[rows] = i
                    if n_leave == n_active:  # nothing left to run
                        return out, exit_index
                    # index_select copies rows at memory speed; h[stay] is a gather 3x slower on a CPU
                    active, h, logits, prev = (t.index_select(0, stay) for t in (active, h, logits, prev))
                    raw = None if raw is None else raw.index_select(0, stay)
            if self.gate_config.history:
                prev = torch.cat([prev, logits[:, None]], dim=1)
        return out, exit_index

    def exit_plan(self) -> tuple[list[bool], list[bool]]:
        """Which gates can fire and which heads must run, as host lists (one device->host read):
        what routing, the ONNX export and the routing benchmark all run by."""
        if not len(self.gates):
            return [], []
        enabled = torch.stack([gate.enabled for gate in self.gates]).tolist()
        return enabled, needed_heads(enabled, self.gate_config.history or self.linked, self.final_reads_heads)

    def head_logits(self, i: int, h: Tensor, prev_head: Tensor | None) -> Tensor:
        """(B, C) head ``i``'s own logits from stage ``i``'s output ``h``, through the cascade
        link from head ``i-1``'s (``prev_head``, (B, C); read only with a cascade)."""
        logits = self.heads[i](h)
        return logits if self.cascade is None else self.cascade(i, logits, prev_head)

    def exit_output(self, i: int, h: Tensor, raw: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Exit ``i``'s output (B, C) and the heads' own logits so far, as routed inference builds them.

        Args:
            h: (B, ...) output of stage ``i``.
            raw: (B, i, C) the earlier heads' own logits; kept (and returned with head ``i``'s
                appended) only when exits read the heads before them, else None.
        """
        logits = self.head_logits(i, h, None if raw is None else raw[:, -1])
        if not self.linked:
            return logits, None
        raw = logits[:, None] if raw is None else torch.cat([raw, logits[:, None]], dim=1)
        return (logits if self.ensemble is None else self.ensemble.exit(i, raw)), raw

    def final_output(self, logits: Tensor, raw: Tensor | None) -> Tensor:
        """The final exit's output from the backbone's logits (B, C) and the early heads' own (B, E-1, C)."""
        if not self.final_reads_heads:
            return logits
        return self.ensemble.exit(self.num_exits - 1, torch.cat([raw, logits[:, None]], dim=1))

    def gate_logit(self, i: int, h: Tensor, logits: Tensor, prev: Tensor) -> Tensor:
        """(B,) pre-sigmoid score of gate ``i``, as routed inference computes it.

        Args:
            i: the early exit.
            h: (B, ...) output of stage ``i``.
            logits: (B, C) exit ``i``'s output.
            prev: (B, i, C) the earlier exits' outputs (read with gate history).
        """
        pooled = self.heads[i].pool(h) if self.gate_config.pooled else None
        return self.gates[i].logit(gate_features(logits, prev, pooled, self.gate_config))

    def _route_one(self, x: Tensor, enabled: list[bool], run_head: list[bool]) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for a batch of one: a scalar decision per enabled exit, nothing to compact."""
        prev: Tensor | None = None  # (1, i, C) earlier exits' outputs, for gate history
        raw: Tensor | None = None  # (1, i, C) earlier heads' own logits, for a cascade or an ensemble
        h = x
        for i in range(self.num_exits - 1):  # (slicing a ModuleList builds a new module: not per call)
            h = self.stages[i](h)
            if not run_head[i]:
                continue
            logits, raw = self.exit_output(i, h, raw)  # (1, C)
            if prev is None:
                prev = logits.new_empty(1, 0, logits.shape[-1])
            # the same decision as a batch's, in the same dtype: one device->host sync
            if enabled[i] and bool(torch.sigmoid(self.gate_logit(i, h, logits, prev)) >= self.threshold):
                return logits, torch.full((1,), i, dtype=torch.long, device=x.device)
            if self.gate_config.history:
                prev = torch.cat([prev, logits[:, None]], dim=1)
        h = self.final_output(self.stages[-1](h), raw)
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
