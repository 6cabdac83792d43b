"""Symmetries of a network's loss and the linear constraints they put on its gradient.

If a loss is invariant under a continuous symmetry of the parameters, its gradient g is orthogonal
to the symmetry's generator (Kunin et al. 2021, "Neural Mechanics"). Three families matter here:

- **rescale**: a positively homogeneous activation (ReLU, LeakyReLU, identity, max-pool, ...)
  between an incoming layer and an outgoing layer. Multiplying a hidden neuron's incoming weights
  and bias by a > 0 and its outgoing weights by 1/a changes nothing, so per neuron n:
  ``⟨g_W1[n], W1[n]⟩ + g_b1[n]·b1[n] − ⟨g_W2[:, n], W2[:, n]⟩ = 0``.
  The incoming layer may also be the affine part of a normalization (BatchNorm γ, β).
- **scale**: a layer followed (through homogeneous ops) by a normalization (BatchNorm, ...).
  Scaling a neuron's incoming weights and bias changes nothing:
  ``⟨g_W[n], W[n]⟩ + g_b[n]·b[n] = 0``.
- **translation**: the output layer of a softmax / cross-entropy. Adding the same vector to every
  row of W (or the same number to every bias) changes no probability: per input feature j,
  ``Σ_i g_W[i, j] = 0``, and ``Σ_i g_b[i] = 0``.

The structures are found from the model's graph with ``torch.fx`` (:func:`find_structures`), never
from hard-coded layer names, so every registry task and new models work; models that fx cannot
trace give an explicit override. :func:`constraint_deviations` evaluates the constraints on any
direction ``u``: for a gradient they hold to float precision; for an optimizer's update Δθ pass
``u = −Δθ`` (:func:`update_deviations`), evaluated at the parameters *before* the step. Plain SGD
then has zero deviation and everything else measures how much the optimizer breaks the symmetry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

Kind = Literal["rescale", "scale", "translation"]
KINDS: tuple[Kind, ...] = ("rescale", "scale", "translation")
LOSS_KINDS = ("cross_entropy", "nll", "mse", "none")


@dataclass(frozen=True)
class SymmetryStructure:
    """One symmetric structure of a model, named by parameter names (``model.named_parameters``).

    - ``rescale``: ``weight``/``bias`` are the incoming layer's, ``out_weight`` the outgoing
      layer's (its dim 1, reshaped to ``(out, neurons, -1)``, holds each neuron's outgoing
      weights; this covers Linear→Linear, Conv→Conv and Conv→flatten→Linear). ``neurons``
      restricts the constraint to a contiguous range of hidden neurons (e.g. the ReLU units of a
      mixed-activation layer).
    - ``scale``: ``weight``/``bias`` of the layer before the normalization; ``group_size``
      neurons share one scale factor (1 for BatchNorm, all of them for LayerNorm).
    - ``translation``: ``weight``/``bias`` of the output layer.

    ``shapes`` (filled by :func:`find_structures` / :meth:`bind`) lets the deviations tell
    leading batch dimensions of ``u`` apart from the parameter's own dimensions.
    """

    kind: Kind
    weight: str
    bias: str | None = None
    out_weight: str | None = None
    neurons: tuple[int, int] | None = None
    group_size: int = 1
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown symmetry kind {self.kind!r}; expected one of {KINDS}")
        if (self.kind == "rescale") != (self.out_weight is not None):
            raise ValueError("out_weight is required for rescale structures and only for them")
        if self.group_size < 1:
            raise ValueError(f"group_size must be ≥ 1, got {self.group_size}")
        if self.neurons is not None and not (0 <= self.neurons[0] < self.neurons[1]):
            raise ValueError(f"neurons must be a non-empty range (start, stop), got {self.neurons}")

    # -- constructors for explicit overrides -------------------------------------------------
    @classmethod
    def rescale(
        cls,
        weight: str,
        bias: str | None,
        out_weight: str,
        neurons: tuple[int, int] | None = None,
    ) -> SymmetryStructure:
        return cls("rescale", weight, bias, out_weight, neurons=neurons)

    @classmethod
    def scale(cls, weight: str, bias: str | None, group_size: int = 1) -> SymmetryStructure:
        return cls("scale", weight, bias, group_size=group_size)

    @classmethod
    def translation(cls, weight: str, bias: str | None) -> SymmetryStructure:
        return cls("translation", weight, bias)

    # -- helpers ------------------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.weight, self.bias, self.out_weight) if n is not None)

    @property
    def label(self) -> str:
        layer = lambda name: name.rsplit(".", 1)[0]
        if self.kind == "rescale":
            rng = f"[{self.neurons[0]}:{self.neurons[1]}]" if self.neurons else ""
            return f"rescale {layer(self.weight)}→{layer(self.out_weight)}{rng}"
        return f"{self.kind} {layer(self.weight)}"

    def shape_of(self, name: str) -> tuple[int, ...]:
        for key, shape in self.shapes:
            if key == name:
                return shape
        raise ValueError(f"structure {self.label!r} is not bound to shapes; call .bind(model)")

    def bind(self, params: nn.Module | Mapping[str, Tensor]) -> SymmetryStructure:
        """The same structure with parameter shapes recorded, validated against ``params``."""
        named = dict(params.named_parameters()) if isinstance(params, nn.Module) else params
        missing = [n for n in self.param_names if n not in named]
        if missing:
            raise ValueError(
                f"{self.label}: parameters {missing} not in the model; "
                f"it has {sorted(named)[:12]}{' ...' if len(named) > 12 else ''}"
            )
        shapes = tuple((n, tuple(named[n].shape)) for n in self.param_names)
        bound = replace(self, shapes=shapes)
        _validate_shapes(bound)
        return bound


def _validate_shapes(s: SymmetryStructure) -> None:
    w = s.shape_of(s.weight)
    if len(w) < 1:
        raise ValueError(f"{s.label}: weight must have at least one dimension")
    n = w[0] if s.kind != "translation" else None
    if s.bias is not None:
        b = s.shape_of(s.bias)
        want = (w[0],)
        if b != want:
            raise ValueError(f"{s.label}: bias shape {b} does not match weight rows {want}")
    if s.kind == "translation" and len(w) != 2:
        raise ValueError(f"{s.label}: translation needs a 2-D (Linear) output weight, got {w}")
    if s.kind == "rescale":
        o = s.shape_of(s.out_weight)
        if len(o) < 2 or o[1] % n:
            raise ValueError(
                f"{s.label}: outgoing weight {o} cannot be split into {n} neurons along dim 1"
            )
        if s.neurons is not None and s.neurons[1] > n:
            raise ValueError(f"{s.label}: neuron range {s.neurons} exceeds {n} neurons")
    if s.kind == "scale" and n % s.group_size:
        raise ValueError(f"{s.label}: {n} neurons do not split into groups of {s.group_size}")


# ---------------------------------------------------------------------------------------------
# Discovery from the model graph
# ---------------------------------------------------------------------------------------------

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS_PER_CHANNEL = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
_HOMOGENEOUS_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
)
_HOMOGENEOUS_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.leaky_relu,
    F.prelu,
    F.dropout,
    torch.flatten,
    torch.reshape,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
}
# view/reshape are taken as flattening (batch dim first, channels next); the outgoing layer's
# shape check in ``bind`` rejects layouts that do not split into the hidden neurons.
_HOMOGENEOUS_METHODS = {"relu", "flatten", "view", "reshape", "contiguous"}
_TRANSPARENT_MODULES = (nn.Identity, nn.Flatten)
_TRANSPARENT_METHODS = {"flatten", "view", "reshape", "contiguous"}
_SOFTMAX_FUNCTIONS = {F.log_softmax, F.softmax, torch.log_softmax, torch.softmax}
_SOFTMAX_MODULES = (nn.LogSoftmax, nn.Softmax)

# Leaf modules fx should not trace into, each with the ranges of its output features on which it
# is positively homogeneous (``[]``: nowhere). Register yours with :func:`register_leaf_module`.
_LEAF_MODULES: dict[type[nn.Module], Callable[[nn.Module], list[tuple[int, int]]]] = {}


def register_leaf_module(
    cls: type[nn.Module], homogeneous_ranges: Callable[[nn.Module], list[tuple[int, int]]]
) -> None:
    """Teach discovery about a module fx cannot trace (or should not trace into).

    ``homogeneous_ranges(module)`` returns the contiguous ranges ``(start, stop)`` of output
    features on which the module acts as a positively homogeneous, feature-wise function
    (``[]`` if none); rescale structures are then found through it for those neurons.
    """
    _LEAF_MODULES[cls] = homogeneous_ranges


def _mixed_activation_ranges(module: nn.Module) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for act, size in zip(module.acts, module.sizes, strict=True):
        if isinstance(act, _HOMOGENEOUS_MODULES):
            ranges.append((start, start + size))
        start += size
    return ranges


def _register_builtin_leaves() -> None:
    from l2o.tasks.models import MixedActivation  # local: keep this module importable alone

    register_leaf_module(MixedActivation, _mixed_activation_ranges)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in _LEAF_MODULES or super().is_leaf_module(m, qualname)


Ranges = list[tuple[int, int]]


def _intersect(ranges: Ranges, others: Ranges) -> Ranges:
    out = []
    for a0, a1 in ranges:
        for b0, b1 in others:
            lo, hi = max(a0, b0), min(a1, b1)
            if lo < hi:
                out.append((lo, hi))
    return out


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _first_arg_is(user: fx.Node, node: fx.Node) -> bool:
    return bool(user.args) and user.args[0] is node


def _homogeneous_step(user: fx.Node, modules: Mapping[str, nn.Module]) -> Ranges | None:
    """``None`` if ``user`` breaks positive homogeneity; else its homogeneous feature ranges
    (``[(0, inf)]`` for an op homogeneous everywhere)."""
    everywhere = [(0, math.inf)]
    if user.op == "call_module":
        module = modules[user.target]
        if type(module) in _LEAF_MODULES:
            return _LEAF_MODULES[type(module)](module)
        return everywhere if isinstance(module, _HOMOGENEOUS_MODULES) else None
    if user.op == "call_function":
        return everywhere if user.target in _HOMOGENEOUS_FUNCTIONS else None
    if user.op == "call_method":
        return everywhere if user.target in _HOMOGENEOUS_METHODS else None
    return None


def _follow_homogeneous(
    node: fx.Node, modules: Mapping[str, nn.Module]
) -> tuple[fx.Node | None, Ranges]:
    """Walk from ``node`` through single-use homogeneous ops; return the first other consumer
    (``None`` if the value fans out or ends) and the feature ranges kept homogeneous so far."""
    ranges: Ranges = [(0, math.inf)]
    while True:
        user = _only_user(node)
        if user is None or not _first_arg_is(user, node):
            return None, ranges
        step = _homogeneous_step(user, modules)
        if step is None:
            return user, ranges
        ranges = _intersect(ranges, step)
        node = user


def _is_layer(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], _LAYERS)


def _is_affine_norm(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """A normalization whose per-channel affine (γ, β) can serve as a rescale's incoming side."""
    if node.op != "call_module":
        return False
    m = modules[node.target]
    if isinstance(m, (*_NORMS_PER_CHANNEL, nn.GroupNorm)):
        return getattr(m, "weight", None) is not None
    if isinstance(m, nn.LayerNorm):
        return m.weight is not None and len(m.normalized_shape) == 1
    return False


def _norm_group_size(module: nn.Module, channels: int) -> int | None:
    """Neurons sharing one scale factor before ``module``; ``None`` if it is no normalization."""
    if isinstance(module, _NORMS_PER_CHANNEL):
        return 1
    if isinstance(module, nn.GroupNorm):
        return module.num_channels // module.num_groups
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return channels
    return None


def _param(module_name: str, module: nn.Module, attr: str) -> str | None:
    p = getattr(module, attr, None)
    if not isinstance(p, nn.Parameter):
        return None
    return f"{module_name}.{attr}" if module_name else attr


def _is_softmax(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_function" and node.target in _SOFTMAX_FUNCTIONS:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        return dim in (-1, 1)
    if node.op == "call_method" and node.target in ("log_softmax", "softmax"):
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        return dim in (-1, 1)
    if node.op == "call_module" and isinstance(modules[node.target], _SOFTMAX_MODULES):
        return modules[node.target].dim in (-1, 1)
    return False


def _is_transparent(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _TRANSPARENT_MODULES)
    if node.op == "call_method":
        return node.target in _TRANSPARENT_METHODS
    return node.op == "call_function" and node.target in (torch.flatten, torch.reshape)


def _ranges_to_neurons(ranges: Ranges, n: int) -> list[tuple[int, int] | None] | None:
    """Neuron ranges of an n-neuron layer (``[None]``: all of them; ``None``: none)."""
    clipped = [(int(lo), int(min(hi, n))) for lo, hi in ranges if lo < n]
    clipped = [(lo, hi) for lo, hi in clipped if lo < hi]
    if not clipped:
        return None
    if clipped == [(0, n)]:
        return [None]
    return clipped


def _layer_structures(node: fx.Node, modules: Mapping[str, nn.Module]) -> list[SymmetryStructure]:
    """Scale / rescale structures whose incoming side is ``node`` (a layer or affine norm)."""
    module = modules[node.target]
    weight = _param(node.target, module, "weight")
    if weight is None:
        return []
    bias = _param(node.target, module, "bias")
    n = module.weight.shape[0]
    consumer, ranges = _follow_homogeneous(node, modules)
    if consumer is None:
        return []
    neuron_ranges = _ranges_to_neurons(ranges, n)
    consumer_module = modules.get(consumer.target) if consumer.op == "call_module" else None
    # scale: a weight layer whose (positively homogeneous image) is normalized. BatchNorm in
    # eval mode with running statistics does not normalize by the batch: no symmetry then.
    if _is_layer(node, modules) and consumer_module is not None and neuron_ranges == [None]:
        group = _norm_group_size(consumer_module, n)
        frozen_bn = (
            isinstance(consumer_module, nn.modules.batchnorm._BatchNorm)
            and not consumer_module.training
            and consumer_module.track_running_stats
        )
        if group is not None and not frozen_bn:
            return [SymmetryStructure.scale(weight, bias, group_size=group)]
    # rescale: into another weight layer that reads every hidden neuron
    if not _is_layer(consumer, modules) or neuron_ranges is None:
        return []
    out = modules[consumer.target]
    if isinstance(out, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and out.groups != 1:
        return []
    out_weight = _param(consumer.target, out, "weight")
    return [SymmetryStructure.rescale(weight, bias, out_weight, neurons=r) for r in neuron_ranges]


def _translation_structure(
    graph: fx.Graph, modules: Mapping[str, nn.Module], loss_kind: str
) -> SymmetryStructure | None:
    """The output Linear of a softmax (in the model, or in a cross-entropy loss on logits)."""
    outputs = [n for n in graph.nodes if n.op == "output"]
    if len(outputs) != 1 or not isinstance(outputs[0].args[0], fx.Node):
        return None
    node = outputs[0].args[0]
    while _is_transparent(node, modules):
        node = node.args[0]
    softmax = _is_softmax(node, modules)
    if softmax:
        node = node.args[0]
        while _is_transparent(node, modules) and len(node.users) == 1:
            node = node.args[0]
    if not (softmax or loss_kind == "cross_entropy"):
        return None
    if node.op != "call_module" or not isinstance(modules[node.target], nn.Linear):
        return None
    if len(node.users) != 1:
        return None
    m = modules[node.target]
    return SymmetryStructure.translation(
        _param(node.target, m, "weight"), _param(node.target, m, "bias")
    )


def _discover(graph: fx.Graph, modules: Mapping[str, nn.Module], loss_kind: str):
    found: list[SymmetryStructure] = []
    for node in graph.nodes:
        if _is_layer(node, modules) or _is_affine_norm(node, modules):
            found.extend(_layer_structures(node, modules))
    translation = _translation_structure(graph, modules, loss_kind)
    return [*found, translation] if translation is not None else found


def find_structures(
    model: nn.Module,
    loss_kind: str = "cross_entropy",
    override: Sequence[SymmetryStructure] | None = None,
) -> list[SymmetryStructure]:
    """The symmetric structures of ``model``, found from its ``torch.fx`` graph.

    ``loss_kind``: ``"cross_entropy"`` when the model outputs logits fed to a softmax
    cross-entropy (the registry's convention), which gives the output layer its translation
    symmetry; with ``"nll"``, ``"mse"`` or ``"none"`` translation is found only if the model
    applies (log_)softmax itself. ``override`` replaces discovery (for models fx cannot trace; a
    model may also define ``symmetry_structures()``); either way the result is validated
    against the model's parameters. Modules fx cannot trace can instead be registered with
    :func:`register_leaf_module`.
    """
    if loss_kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss_kind {loss_kind!r}; expected one of {LOSS_KINDS}")
    if override is None and callable(getattr(model, "symmetry_structures", None)):
        override = model.symmetry_structures()
    if override is not None:
        return [s.bind(model) for s in override]
    if not _LEAF_MODULES:
        _register_builtin_leaves()
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}). "
            "Pass override=[SymmetryStructure.rescale(...), ...], define "
            "model.symmetry_structures(), or register the offending module with "
            "l2o.symmetry.register_leaf_module."
        ) from exc
    modules = dict(model.named_modules())
    structures = []
    for s in _discover(graph, modules, loss_kind):
        try:
            structures.append(s.bind(model))
        except ValueError:
            continue  # e.g. a view that does not split into the hidden neurons: no symmetry
    return structures


# ---------------------------------------------------------------------------------------------
# Constraint deviations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConstraintDeviation:
    """How far a direction ``u`` is from satisfying one structure's constraints.

    ``per_neuron``: signed deviation of each one-parameter symmetry, shape ``(*batch, k)``: one
    per hidden neuron for rescale (within ``neurons``), one per neuron group for scale, and for
    translation one per input feature (column sums of ``u_W``) followed by the bias sum.
    ``normalizer``: the same sums with every term in absolute value, so ``l1 / normalizer``
    is a scale-free measure in [0, 1] that does not grow with the update size.
    """

    structure: SymmetryStructure
    per_neuron: Tensor
    normalizer: Tensor
    _paper: Tensor

    @property
    def magnitude(self) -> Tensor:
        """The paper's scalar: ``|Σ_n d_n|`` (translation: ``|Σ u_W| + |Σ u_b|``)."""
        return self._paper

    @property
    def l1(self) -> Tensor:
        """``Σ_n |d_n|``: unlike the paper's sum, per-neuron deviations cannot cancel."""
        return self.per_neuron.abs().sum(-1)

    @property
    def relative(self) -> Tensor:
        return self.l1 / self.normalizer.clamp_min(torch.finfo(self.normalizer.dtype).tiny)


def _batch_dims(s: SymmetryStructure, name: str, t: Tensor) -> int:
    nb = t.dim() - len(s.shape_of(name))
    if nb < 0 or tuple(t.shape[nb:]) != s.shape_of(name):
        raise ValueError(
            f"{s.label}: {name} has shape {tuple(t.shape)}, expected (*batch, "
            f"{', '.join(map(str, s.shape_of(name)))})"
        )
    return nb


def _per_row(x: Tensor, nb: int) -> Tensor:
    """Sum over all but the first parameter dimension: ``(*batch, n, ...) -> (*batch, n)``."""
    return x.reshape(*x.shape[: nb + 1], -1).sum(-1)


def _incoming(s: SymmetryStructure, u, p) -> Tensor:
    """Per neuron ⟨u_W[n], W[n]⟩ + u_b[n]·b[n], shape ``(*batch, n)``."""
    nb = _batch_dims(s, s.weight, u[s.weight])
    prod = u[s.weight] * p[s.weight]
    term = _per_row(prod, nb)
    if s.bias is not None:
        term = term + u[s.bias] * p[s.bias]
    return term


def _deviation(s: SymmetryStructure, u: Mapping[str, Tensor], p: Mapping[str, Tensor]):
    if s.kind == "translation":
        _batch_dims(s, s.weight, u[s.weight])
        cols = u[s.weight].sum(-2)
        norm = u[s.weight].abs().sum((-2, -1))
        paper = cols.sum(-1).abs()
        if s.bias is not None:
            bsum = u[s.bias].sum(-1)
            cols = torch.cat([cols, bsum.unsqueeze(-1)], -1)
            norm = norm + u[s.bias].abs().sum(-1)
            paper = paper + bsum.abs()
        return ConstraintDeviation(s, cols, norm, paper)
    incoming = _incoming(s, u, p)
    if s.kind == "scale":
        g = s.group_size
        dev = incoming.reshape(*incoming.shape[:-1], -1, g).sum(-1) if g > 1 else incoming
        # the normalizer uses |⟨u_W[n], W[n]⟩| etc. per neuron, before grouping
        nb = incoming.dim() - 1
        norm = _per_row((u[s.weight] * p[s.weight]).abs(), nb)
        if s.bias is not None:
            norm = norm + (u[s.bias] * p[s.bias]).abs()
        return ConstraintDeviation(s, dev, norm.sum(-1), dev.sum(-1).abs())
    # rescale
    nb_out = _batch_dims(s, s.out_weight, u[s.out_weight])
    n = s.shape_of(s.weight)[0]
    prod_out = u[s.out_weight] * p[s.out_weight]
    rows = prod_out.shape[nb_out]
    outgoing = prod_out.reshape(*prod_out.shape[:nb_out], rows, n, -1).sum((-3, -1))
    nb = incoming.dim() - 1
    norm_in = _per_row((u[s.weight] * p[s.weight]).abs(), nb)
    if s.bias is not None:
        norm_in = norm_in + (u[s.bias] * p[s.bias]).abs()
    norm_out = prod_out.abs().reshape(*prod_out.shape[:nb_out], rows, n, -1).sum((-3, -1))
    dev = incoming - outgoing
    norm = norm_in + norm_out
    if s.neurons is not None:
        lo, hi = s.neurons
        dev, norm = dev[..., lo:hi], norm[..., lo:hi]
    return ConstraintDeviation(s, dev, norm.sum(-1), dev.sum(-1).abs())


def constraint_deviations(
    structures: Iterable[SymmetryStructure],
    u: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
) -> list[ConstraintDeviation]:
    """Deviations of the direction ``u`` from each structure's constraints at ``params``.

    ``u`` is gradient-like: a gradient itself, or ``−Δθ`` for an update (see
    :func:`update_deviations`). Tensors in ``u`` may carry leading batch dimensions (several
    minibatches, a meta-batch of optimizees); ``params`` may carry the same or none. Everything
    is differentiable with respect to ``u`` (and ``params``; detach them if they should not be).
    """
    return [_deviation(s, u, params) for s in structures]


def update_deviations(
    structures: Iterable[SymmetryStructure],
    delta: Mapping[str, Tensor],
    params_before: Mapping[str, Tensor],
) -> list[ConstraintDeviation]:
    """Deviations of an update ``Δθ = θ_{t+1} − θ_t``: the constraints are on gradients and SGD
    steps along ``−g``, so they are evaluated on ``u = −Δθ`` at ``θ_t`` (the parameters *before*
    the step: after it, even SGD would deviate by ``−lr·‖g‖²`` terms)."""
    structures = list(structures)
    names = {n for s in structures for n in s.param_names}
    return constraint_deviations(structures, {n: -delta[n] for n in names}, params_before)


def deviations_by_kind(
    deviations: Iterable[ConstraintDeviation], measure: str = "magnitude"
) -> dict[str, Tensor]:
    """Sum of a deviation measure (``magnitude``, ``l1`` or ``normalizer``) over the structures
    of each kind present; kinds without structures are absent."""
    if measure not in ("magnitude", "l1", "normalizer"):
        raise ValueError(f"unknown measure {measure!r}")
    out: dict[str, Tensor] = {}
    for d in deviations:
        value = getattr(d, measure)
        kind = d.structure.kind
        out[kind] = out[kind] + value if kind in out else value
    return out


def describe(structures: Iterable[SymmetryStructure]) -> str:
    return ", ".join(s.label for s in structures) or "(no symmetric structure)"
