"""Symmetry-constraint deviations along an optimizer's trajectory (the paper's figure 4).

At step t the optimizer moves θ_t → θ_{t+1} = θ_t + Δθ_t after seeing the gradient g_t at θ_t.
For every structure of the model we record the deviation of ``u = −Δθ_t`` and of ``g_t`` (the
reference, zero up to rounding) at θ_t, in three measures: the paper's summed ``magnitude``,
the per-neuron ``l1`` (no cancellation between neurons) and the ``normalizer`` (the same sums in
absolute value, so that ``l1 / normalizer`` is a scale-free measure of symmetry breaking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from l2o.symmetry import SymmetryStructure, constraint_deviations, update_deviations

MEASURES = ("magnitude", "l1", "normalizer")
QUANTITIES = ("update", "gradient")


def step_deviation_table(
    structures: Sequence[SymmetryStructure],
    params_before: Mapping[str, Tensor],
    delta: Mapping[str, Tensor],
    grads: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Deviations at one step as a ``(2, n_structures, 3)`` tensor: [update, gradient] ×
    structure × [magnitude, l1, normalizer]; the gradient rows are NaN when ``grads`` is None."""
    with torch.no_grad():
        rows = [_rows(update_deviations(structures, delta, params_before))]
        if grads is not None:
            rows.append(_rows(constraint_deviations(structures, grads, params_before)))
        else:
            rows.append(torch.full_like(rows[0], float("nan")))
    return torch.stack(rows)


def _rows(devs) -> Tensor:
    return torch.stack(
        [torch.stack([d.magnitude, d.l1, d.normalizer]).float().cpu() for d in devs]
    ).reshape(len(devs), 3)


def table_to_rows(
    steps: Tensor, tables: Tensor, labels: Sequence[str], kinds: Sequence[str]
) -> list[dict]:
    """Flatten stacked tables ``(T, 2, S, 3)`` into one dict per (step, quantity, structure)."""
    out = []
    for i, step in enumerate(steps.tolist()):
        for q, quantity in enumerate(QUANTITIES):
            for s, (label, kind) in enumerate(zip(labels, kinds, strict=True)):
                mag, l1, norm = tables[i, q, s].tolist()
                out.append(
                    {
                        "step": int(step),
                        "quantity": quantity,
                        "structure": label,
                        "kind": kind,
                        "magnitude": mag,
                        "l1": l1,
                        "relative": l1 / norm if norm > 0 else 0.0,
                    }
                )
    return out


def by_kind(tables: Tensor, kinds: Sequence[str], measure: str = "magnitude") -> dict[str, Tensor]:
    """Sum a measure over the structures of each kind: ``{kind: (T, 2)}`` (update, gradient).

    For ``"relative"`` the kind's summed l1 is divided by its summed normalizer."""
    out: dict[str, Tensor] = {}
    for kind in dict.fromkeys(kinds):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        sub = tables[:, :, idx, :].sum(2)  # (T, 2, 3)
        if measure == "relative":
            out[kind] = sub[..., 1] / sub[..., 2].clamp_min(1e-30)
        else:
            out[kind] = sub[..., MEASURES.index(measure)]
    return out


def traces_from_trajectory(recording, structures: Sequence[SymmetryStructure]) -> Tensor:
    """Recompute the ``(T, 2, S, 3)`` tables offline from a recording's trajectory stream."""
    traj = recording.streams["trajectory"]
    tables = []
    for i in range(traj["steps"].shape[0]):
        theta = recording.unflatten(traj["params"][i])
        delta = recording.unflatten(traj["updates"][i])
        grads = recording.unflatten(traj["grads"][i])
        tables.append(step_deviation_table(structures, theta, delta, grads))
    return torch.stack(tables)
