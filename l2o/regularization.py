"""Regularizers on a learned optimizer's updates, added to the meta-loss at every inner step.

Both are callables ``(updates, params) -> scalar`` where ``updates[name]`` is the step Δθ the
optimizer applies to ``params[name]`` (``θ ← θ + Δθ``, output scale η_out included) and
``params`` are the optimizee parameters *before* the step. Leading batch dimensions (a
meta-batch of optimizees) are averaged, so ``reg_mul`` means the same for any meta-batch size.

:class:`SymmetryRegularizer` is the paper's term against symmetry breaking,

    ``| reg_mul · ( w_r·|rescale| + w_s·|scale| + w_t·(|Σ u_W| + |Σ u_b|) ) |``,  u = −Δθ,

with each ``|·|`` the paper's summed deviation (:attr:`ConstraintDeviation.magnitude`) added over
the model's structures of that kind. The parameters are detached: only the optimizer's output
carries gradient to its weights. The paper uses w = ⅓ each on a model that has all three kinds;
a model that lacks some kind (a sigmoid MLP has only translation) has those terms dropped and the
remaining weights rescaled to the same total, so ``reg_mul`` sets the overall strength whatever
the architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from l2o.symmetry import KINDS, SymmetryStructure, constraint_deviations, find_structures

DEFAULT_WEIGHTS: dict[str, float] = {kind: 1.0 / 3.0 for kind in KINDS}
REGULARIZER_KINDS = ("symmetry", "norm", "none")


def _check_reg_mul(reg_mul: float) -> float:
    reg_mul = float(reg_mul)
    if not reg_mul >= 0.0:
        raise ValueError(f"reg_mul must be a finite number ≥ 0, got {reg_mul}")
    return reg_mul


def normalized_weights(
    weights: Mapping[str, float] | None, present: Sequence[str]
) -> dict[str, float]:
    """Weights restricted to the kinds ``present``, rescaled to keep the requested total."""
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    unknown = set(weights) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown symmetry kinds {sorted(unknown)} in weights; use {KINDS}")
    if any(not w >= 0.0 for w in weights.values()):
        raise ValueError(f"weights must be ≥ 0, got {weights}")
    total = sum(weights.values())
    kept = {k: weights.get(k, 0.0) for k in present if weights.get(k, 0.0) > 0.0}
    kept_total = sum(kept.values())
    if kept_total == 0.0:
        raise ValueError(
            f"no positive weight on the symmetry kinds this model has ({list(present)}); "
            f"weights were {weights}"
        )
    return {k: w * total / kept_total for k, w in kept.items()}


class SymmetryRegularizer:
    """The paper's penalty on the symmetry breaking of the optimizer's updates."""

    def __init__(
        self,
        structures: Sequence[SymmetryStructure],
        reg_mul: float,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.structures = list(structures)
        if not self.structures:
            raise ValueError("symmetry regularization needs at least one symmetric structure")
        self.reg_mul = _check_reg_mul(reg_mul)
        present = [k for k in KINDS if any(s.kind == k for s in self.structures)]
        self.weights = normalized_weights(weights, present)
        self.structures = [s for s in self.structures if s.kind in self.weights]
        self._names = sorted({n for s in self.structures for n in s.param_names})

    def terms(
        self, updates: Mapping[str, Tensor], params: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """Per kind, the summed paper deviation of ``u = −Δθ`` (batch dims kept)."""
        u = {n: -updates[n] for n in self._names}
        p = {n: params[n].detach() for n in self._names}
        out: dict[str, Tensor] = {}
        for dev in constraint_deviations(self.structures, u, p):
            kind = dev.structure.kind
            out[kind] = out[kind] + dev.magnitude if kind in out else dev.magnitude
        return out

    def __call__(self, updates: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Tensor:
        terms = self.terms(updates, params)
        total = sum(self.weights[k] * terms[k] for k in self.weights)
        return (self.reg_mul * total).abs().mean()

    def __repr__(self) -> str:
        labels = ", ".join(s.label for s in self.structures)
        return f"SymmetryRegularizer(reg_mul={self.reg_mul}, weights={self.weights}, [{labels}])"


class NormRegularizer:
    """``reg_mul · Σ_tensors ‖Δθ‖₂``: penalizes the update size itself (the paper's control).

    ``param_ndims`` gives each tensor's own number of dimensions so that leading batch
    dimensions are told apart (and averaged); without it the updates are taken unbatched.
    """

    def __init__(self, reg_mul: float, param_ndims: Mapping[str, int] | None = None) -> None:
        self.reg_mul = _check_reg_mul(reg_mul)
        self.param_ndims = dict(param_ndims) if param_ndims is not None else None

    def __call__(self, updates: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Tensor:
        total = None
        for name, upd in updates.items():
            ndim = self.param_ndims[name] if self.param_ndims is not None else upd.dim()
            batch = upd.dim() - ndim
            norm = upd.reshape(*upd.shape[:batch], -1).norm(dim=-1)
            total = norm if total is None else total + norm
        if total is None:
            raise ValueError("NormRegularizer got no updates")
        return (self.reg_mul * total).mean()

    def __repr__(self) -> str:
        return f"NormRegularizer(reg_mul={self.reg_mul})"


def build_regularizer(
    kind: str,
    model: nn.Module,
    reg_mul: float,
    weights: Mapping[str, float] | None = None,
    loss_kind: str = "cross_entropy",
    structures: Sequence[SymmetryStructure] | None = None,
) -> SymmetryRegularizer | NormRegularizer | None:
    """The regularizer a config asks for, on ``model``'s structures; ``None`` for ``"none"``
    or ``reg_mul == 0`` (nothing to add to the meta-loss).

    ``structures`` overrides discovery (see :func:`l2o.symmetry.find_structures`).
    """
    if kind not in REGULARIZER_KINDS:
        raise ValueError(f"unknown regularization kind {kind!r}; expected {REGULARIZER_KINDS}")
    reg_mul = _check_reg_mul(reg_mul)
    if kind == "none" or reg_mul == 0.0:
        return None
    if kind == "norm":
        return NormRegularizer(reg_mul, {n: p.dim() for n, p in model.named_parameters()})
    found = find_structures(model, loss_kind=loss_kind, override=structures)
    if not found:
        raise ValueError(
            f"symmetry regularization: {type(model).__name__} has no symmetric structure "
            f"(loss_kind={loss_kind!r}); use kind 'norm' or 'none', or pass structures"
        )
    return SymmetryRegularizer(found, reg_mul, weights)
