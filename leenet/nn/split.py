"""Cut a traceable backbone into sequential stages at named modules, with ``torch.fx``.

An exit point is a module's qualified name (as in ``model.named_modules()``). The cut goes
right after the last operation of that module in the traced graph: for ``call_module``
nodes the target tells the owner, for functions and methods (``torch.cat`` in a DenseNet
block, the ``+`` of a residual block) the ``nn_module_stack`` the tracer records does. A cut
is clean when exactly one input-dependent value made before it is used after it; values
that do not depend on the input (parameters, buffers, constants) are copied into every
stage that needs them, so they never block a cut.

Each stage is a ``torch.fx.GraphModule`` whose submodules are the backbone's own module
objects: stages share parameters, buffers and train/eval state with the backbone.

``torch.fx`` runs ``forward`` once and records the branch it took, so a traced module's
``if self.training`` is frozen at trace time. The model is therefore always traced in eval
mode (the inference graph), and small modules outside ``torch.nn`` whose ``forward`` reads
``self.training`` (torchvision's ``StochasticDepth``, timm's ``BatchNormAct2d`` and
``Attention``) are kept whole, as calls, so they still follow ``.train()`` / ``.eval()``.
Optional ``forward`` arguments (timm's ``attn_mask=None``) are traced at their defaults.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from leenet.errors import ExitPointError, LeenetError, brief

_MAX_LISTED = 24  # names shown in an error message before it says "... N more"


class _Traced:
    """A traced backbone and, for every module name, where a cut after it would go.

    Attributes:
        graph_module: the ``symbolic_trace`` result; its submodules are the model's.
        nodes: the graph's nodes in execution order.
        dynamic: nodes whose value depends on the input.
        position: module name → index in ``nodes`` of its last input-dependent node.
        live: index → the dynamic values made at or before it and used after it.
        last_compute: index of the last dynamic node before the output.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model_name = type(model).__name__
        self.graph_module, defaulted = _trace(model)
        self.nodes = list(self.graph_module.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        # optional arguments traced at their defaults keep a placeholder only for fx's own check
        inputs = placeholders[: len(placeholders) - defaulted]
        if len(inputs) != 1:
            raise LeenetError(
                f"{self.model_name}.forward takes {len(inputs)} inputs but a backbone must take one "
                "image batch; wrap it in a module with forward(x), or pass an explicit list of stages"
            )
        self.input = inputs[0]
        self.dynamic = _input_dependent(self.nodes, self.input)
        self.position = self._positions()
        self.live = self._liveness()
        compute = [i for i, n in enumerate(self.nodes) if n in self.dynamic and n.op != "output"]
        self.last_compute = compute[-1]
        module_order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        self.module_names = set(module_order)
        self.valid = sorted(
            (name for name, pos in self.position.items()
             if name in module_order and len(self.live[pos]) == 1 and pos < self.last_compute),
            key=lambda name: (self.position[name], module_order[name]),
        )

    def _positions(self) -> dict[str, int]:
        position: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node in self.dynamic and node.op != "placeholder":
                for name in _owners(node):
                    position[name] = i
        return position

    def _liveness(self) -> list[tuple[fx.Node, ...]]:
        index = {node: i for i, node in enumerate(self.nodes)}
        last_use = {n: max((index[u] for u in n.users), default=-1) for n in self.dynamic}
        live: list[tuple[fx.Node, ...]] = []
        current: dict[fx.Node, None] = {}  # insertion-ordered set
        for i, node in enumerate(self.nodes):
            if node in self.dynamic and last_use[node] > i:
                current[node] = None
            for done in [n for n in current if last_use[n] <= i]:
                del current[done]
            live.append(tuple(current))
        return live

    def cut_index(self, name: str) -> int:
        """Index of the node after which ``name`` cuts; raises ExitPointError if it cannot."""
        if not isinstance(name, str) or name not in self.module_names or name == "":
            close = difflib.get_close_matches(str(name), self.valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ExitPointError(
                f"unknown exit point {name!r} for {self.model_name}{hint}; "
                f"valid exit points: {self.readable_valid()}"
            )
        if name not in self.position:
            raise ExitPointError(
                f"{name!r} does no work of its own in the traced {self.model_name} (unused, or "
                f"inside a module traced as one operation); valid exit points: {self.readable_valid()}"
            )
        pos = self.position[name]
        if pos >= self.last_compute:
            raise ExitPointError(
                f"cut after {name!r} leaves nothing for the last stage: it ends the network; "
                f"valid exit points: {self.readable_valid()}"
            )
        live = self.live[pos]
        if len(live) != 1:
            values = ", ".join(n.name for n in live)
            raise ExitPointError(
                f"cut after {name!r} leaves {len(live)} live tensors ({values}): a skip connection "
                f"or a branch crosses it; valid exit points: {self.readable_valid()}"
            )
        return pos

    def cuts(self) -> list[list[str]]:
        """The valid exit points grouped by the place they cut, in execution order."""
        by_cut: dict[int, list[str]] = {}
        for name in self.valid:
            by_cut.setdefault(self.position[name], []).append(name)
        return [by_cut[pos] for pos in sorted(by_cut)]

    def readable_valid(self, limit: int | None = _MAX_LISTED) -> str:
        """The valid exit points, one per cut (the shallowest name), runs compressed; at most ``limit``."""
        items = _compress_runs([min(names, key=_depth) for names in self.cuts()])
        if limit is not None and len(items) > limit:
            items = [*items[:limit], f"... {len(items) - limit} more (see `leenet exits --arch NAME`)"]
        return ", ".join(items) if items else "none (pass an explicit list of stages instead)"


def valid_exit_points(model: nn.Module) -> list[str]:
    """Module names after which ``model`` can be cut into two stages.

    A name is valid when the traced graph, cut after the module's last operation, has
    exactly one input-dependent tensor crossing the cut, and the cut is not after the last
    operation of the network. Containers (``layer1``, ``features.denseblock1``) and leaves
    (``features.5``) are both listed.

    Args:
        model: a ``torch.fx``-traceable classifier taking one image batch.

    Returns:
        The names in execution order; names that cut at the same place are listed
        container first.

    Raises:
        LeenetError: the model cannot be traced.
    """
    return list(_Traced(model).valid)


def describe_exit_points(model: nn.Module) -> tuple[str, tuple[str, str] | None]:
    """Every cut of ``model`` once, by its shallowest name, numbered runs compressed
    (``block3.0..block3.4``): what ``leenet exits`` prints. Also one pair of names that cut at
    the same place (a block and its last child, ``("block1", "block1.2")``), or None."""
    traced = _Traced(model)
    same = next(((min(n, key=_depth), max(n, key=_depth)) for n in traced.cuts() if len(n) > 1), None)
    return traced.readable_valid(limit=None), same


def cut_shapes(model: nn.Module, example_input: torch.Tensor) -> list[tuple[list[str], tuple[int, ...]]]:
    """Every cut of ``model`` with the per-sample shape of the tensor crossing it.

    Args:
        model: a traceable classifier; may live on the ``meta`` device (nothing is computed).
        example_input: (1, C, H, W) on the model's device.

    Returns:
        ``(names, shape)`` per cut in execution order; ``names`` as in :meth:`_Traced.cuts`.
    """
    traced = _Traced(model)
    with torch.no_grad():
        ShapeProp(traced.graph_module).propagate(example_input)
    return [(names, tuple(traced.live[traced.position[names[0]]][0].meta["tensor_meta"].shape[1:]))
            for names in traced.cuts()]


def _depth(name: str) -> int:
    return name.count(".")


def split_backbone(model: nn.Module, exit_points: Sequence[str]) -> list[nn.Module]:
    """Cut ``model`` after each exit point into ``len(exit_points) + 1`` stages.

    ``stages[0](x)`` returns the features after ``exit_points[0]``; each next stage maps the
    previous features onward; the last stage returns the model's logits. Running the
    stages in order computes exactly ``model(x)``. The stages share parameters, buffers
    and train/eval state with ``model``.

    A stage that begins with an in-place operation (a cut right before
    ``nn.ReLU(inplace=True)``, say) overwrites its input: run an exit head on the features
    before the next stage, or cut elsewhere.

    Args:
        model: a ``torch.fx``-traceable classifier taking one image batch.
        exit_points: distinct module names in execution order, e.g. ``["layer1", "layer2"]``.

    Returns:
        The stages, as ``torch.fx.GraphModule`` instances.

    Raises:
        ExitPointError: a name is unknown, repeated, out of order, or does not cut the
            graph at a single tensor; the message lists the valid names.
        LeenetError: the model cannot be traced; pass an explicit list of stages instead.
    """
    if isinstance(exit_points, str):
        raise ExitPointError(f"exit points must be a list of names, e.g. [{exit_points!r}], not a string")
    traced = _Traced(model)
    cuts = [traced.cut_index(name) for name in exit_points]
    _check_order(list(exit_points), cuts)
    bounds = [0, *(c + 1 for c in cuts), len(traced.nodes)]
    stage_inputs = [traced.input, *(traced.live[c][0] for c in cuts)]
    stage_outputs: list[fx.Node | None] = [traced.live[c][0] for c in cuts] + [None]
    return [
        _build_stage(traced, bounds[i], bounds[i + 1], stage_inputs[i], stage_outputs[i], i)
        for i in range(len(stage_inputs))
    ]


def _trace(model: nn.Module) -> tuple[fx.GraphModule, int]:
    """``model`` traced in eval mode (its mode restored after), and how many of its
    placeholders are optional ``forward`` arguments traced at their defaults."""
    if not isinstance(model, nn.Module):
        raise LeenetError(f"a backbone must be a torch.nn.Module, got {type(model).__name__}")
    defaults = _defaulted_arguments(model)
    was_training = model.training
    model.eval()
    try:
        tracer = _ModeTracer()
        graph = tracer.trace(model, concrete_args=defaults or None)
        return fx.GraphModule(tracer.root, graph, type(model).__name__), len(defaults)
    except Exception as exc:  # tracing runs the model's own Python: any failure means "not traceable"
        raise LeenetError(
            f"cannot trace {type(model).__name__} with torch.fx ({brief(exc)}); pass an explicit "
            "list of stages instead of exit point names"
        ) from None
    finally:
        model.train(was_training)


class _ModeTracer(fx.Tracer):
    """fx's tracer, keeping small mode-dependent modules whole (see the module docstring)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if super().is_leaf_module(m, module_qualified_name):
            return True
        shallow = all(next(c.children(), None) is None for c in m.children())  # cut points stay visible
        return m is not self.root and shallow and _reads_training(type(m))


@functools.cache
def _reads_training(cls: type) -> bool:
    """Whether ``cls.forward``'s source reads ``self.training`` (False when there is no source)."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return re.search(r"\bself\.training\b", source) is not None


def _defaulted_arguments(model: nn.Module) -> dict[str, object]:
    """``forward``'s arguments after the first that have defaults, with those defaults."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return {}
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in params if p.kind in named and p.default is not inspect.Parameter.empty}


def _input_dependent(nodes: list[fx.Node], placeholder: fx.Node) -> set[fx.Node]:
    """Nodes whose value depends on ``placeholder`` (the graph is in topological order)."""
    dynamic = {placeholder}
    for node in nodes:
        if any(arg in dynamic for arg in node.all_input_nodes):
            dynamic.add(node)
    return dynamic


def _owners(node: fx.Node) -> set[str]:
    """Names of the modules whose forward a node belongs to."""
    owners = {path for path, _ in node.meta.get("nn_module_stack", {}).values()}
    if node.op in ("call_module", "get_attr"):
        parts = str(node.target).split(".")
        owners.update(".".join(parts[: k + 1]) for k in range(len(parts)))
    owners.discard("")
    return owners


def _check_order(names: list[str], cuts: list[int]) -> None:
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ExitPointError(f"exit point {twice[0]!r} is given twice; give each exit point once")
    for (a, cut_a), (b, cut_b) in zip(zip(names, cuts), zip(names[1:], cuts[1:])):
        if cut_a == cut_b:
            raise ExitPointError(
                f"exit points {a!r} and {b!r} cut at the same place; keep one of them"
            )
        if cut_b < cut_a:
            raise ExitPointError(
                f"exit points must be in execution order: {b!r} runs before {a!r}; "
                f"swap them or drop one"
            )


def _build_stage(
    traced: _Traced, start: int, stop: int, source: fx.Node, target: fx.Node | None, index: int
) -> fx.GraphModule:
    """A GraphModule running ``traced.nodes[start:stop]`` from ``source`` to ``target``.

    ``target`` None means the graph's own output (the logits).
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {source: graph.placeholder(source.name)}

    def lookup(node: fx.Node) -> fx.Node:
        # input-independent values (parameters, constants) are recomputed where needed
        if node not in env:
            if node in traced.dynamic:
                raise AssertionError(f"{node.name} crosses a cut that was checked to be clean")
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    for node in traced.nodes[start:stop]:
        if node in traced.dynamic and node.op not in ("placeholder", "output"):
            env[node] = graph.node_copy(node, lookup)
    if target is None:
        graph.output(fx.map_arg(traced.nodes[-1].args[0], lookup))
    else:
        graph.output(lookup(target))
    return fx.GraphModule(traced.graph_module, graph, class_name=f"Stage{index}")


def _compress_runs(names: list[str]) -> list[str]:
    """Write consecutive numbered siblings as ``features.0..features.7``."""
    items: list[str] = []
    run: list[str] = []
    for name in [*names, None]:
        if run and name is not None and _follows(run[-1], name):
            run.append(name)
            continue
        if run:
            items.append(run[0] if len(run) == 1 else f"{run[0]}..{run[-1]}")
        run = [name] if name is not None else []
    return items


def _follows(prev: str, name: str) -> bool:
    a = re.fullmatch(r"(.*\.)(\d+)", prev)
    b = re.fullmatch(r"(.*\.)(\d+)", name)
    return bool(a and b and a[1] == b[1] and int(b[2]) == int(a[2]) + 1)
