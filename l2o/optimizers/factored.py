"""Adafactor's factored second moments (Shazeer & Stern 2018) over a flat parameter vector, as
features of a learned optimizer (Metz et al. 2022, ``adafac_mlp_lopt`` in learned_optimization).

A tensor of ≥ 2 dims is viewed as a matrix ``[rows = shape[0], cols = prod(shape[1:])]``; its
accumulators are EMAs of the mean squared gradient over each row (``r [R]``) and each column
(``c [C]``), and the per-coordinate estimate is ``v̂_ij = r_i c_j / mean_i(r)`` (rank one, memory
``R + C`` instead of ``R·C``). All tensors' rows and columns live in one row and one column
vector, addressed per coordinate by ``row_ids`` / ``col_ids [N]`` (built once from the spec), so
a step is one ``index_add`` and one ``index_select`` per vector over any leading dims. Tensors
of < 2 dims (and a vector without a spec) keep the unfactored estimate: their coordinates point
at a last, unused row and column.

The accumulators are float64 and a non-finite ``g²`` counts as 0 in the means: a NaN or huge
gradient coordinate then leaves its row, its column and the rest of its tensor finite (its own
features stay non-finite through ``g``).
"""

from __future__ import annotations

import math

import torch

from l2o.optimizers.base import ParamSpec, State

#: ``ε`` in ``rsqrt(v̂ + ε)`` (as the unfactored features' ``rsqrt(v + ε)``).
FACTORED_EPS = 1e-8

#: The smallest row mean that ``v̂`` divides by (an all-zero tensor gives ``v̂ = 0``).
FACTORED_TINY = 1e-30


def factored_layout(spec: ParamSpec | None, n: int, device: torch.device | str) -> State:
    """The constant layout of ``n`` coordinates (``spec`` None: one unfactored tensor):

    ``row_ids``, ``col_ids [N]``: each coordinate's row and column (the last of each for
    unfactored coordinates); ``row_counts [R+1]``, ``col_counts [C+1]`` (float64): the entries
    a row / column averages over; ``row_groups [R+1]``: each row's matrix (the last for the
    unused row); ``group_rows [K+1]`` (float64): each matrix's number of rows."""
    shapes = ((n,),) if spec is None else spec.shapes
    row_parts, col_parts = [], []
    row_counts, col_counts, row_groups, group_rows = [], [], [], []
    n_rows = n_cols = 0
    for shape in shapes:
        numel = math.prod(shape)
        if len(shape) < 2:  # -1: the unused row / column, numbered once all are known
            row_parts.append(torch.full((numel,), -1))
            col_parts.append(torch.full((numel,), -1))
            continue
        rows, cols = shape[0], numel // shape[0]
        row_parts.append(torch.arange(n_rows, n_rows + rows).repeat_interleave(cols))
        col_parts.append(torch.arange(n_cols, n_cols + cols).repeat(rows))
        row_counts += [float(cols)] * rows
        col_counts += [float(rows)] * cols
        row_groups += [len(group_rows)] * rows
        group_rows.append(float(rows))
        n_rows, n_cols = n_rows + rows, n_cols + cols
    row_ids, col_ids = torch.cat(row_parts), torch.cat(col_parts)
    row_ids[row_ids < 0], col_ids[col_ids < 0] = n_rows, n_cols
    f64 = dict(dtype=torch.float64, device=device)
    return {
        "row_ids": row_ids.to(device),
        "col_ids": col_ids.to(device),
        "row_counts": torch.tensor([*row_counts, 1.0], **f64),
        "col_counts": torch.tensor([*col_counts, 1.0], **f64),
        "row_groups": torch.tensor([*row_groups, len(group_rows)], device=device),
        "group_rows": torch.tensor([*group_rows, 1.0], **f64),
    }


def init_accumulators(lead: torch.Size, layout: State) -> State:
    """Zero ``row [..., R+1]`` and ``col [..., C+1]`` (float64) for leading dims ``lead``."""
    return {
        "row": layout["row_counts"].new_zeros(*lead, layout["row_counts"].shape[0]),
        "col": layout["col_counts"].new_zeros(*lead, layout["col_counts"].shape[0]),
    }


def advance_accumulators(
    grads: torch.Tensor, row: torch.Tensor, col: torch.Tensor, layout: State, decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The row and column EMAs after one step's gradients ``grads [..., N]`` (non-finite
    squares count as 0)."""
    g = grads.to(torch.float64)
    g2 = torch.where(torch.isfinite(g), g, 0.0).square()
    d = grads.dim() - 1
    row_mean = row.new_zeros(row.shape).index_add(d, layout["row_ids"], g2) / layout["row_counts"]
    col_mean = col.new_zeros(col.shape).index_add(d, layout["col_ids"], g2) / layout["col_counts"]
    return torch.lerp(row_mean, row, decay), torch.lerp(col_mean, col, decay)


def factored_estimate(
    row: torch.Tensor, col: torch.Tensor, v: torch.Tensor, layout: State
) -> torch.Tensor:
    """``v̂ [..., N]`` in ``v``'s dtype: ``r_i c_j / mean_i(r)`` on matrices, ``v`` elsewhere."""
    d = row.dim() - 1
    groups = layout["row_groups"]
    sums = row.new_zeros(*row.shape[:-1], layout["group_rows"].shape[0]).index_add(d, groups, row)
    mean = (sums / layout["group_rows"]).clamp_min(FACTORED_TINY).index_select(d, groups)
    ids = layout["row_ids"]
    vhat = (row / mean).index_select(d, ids) * col.index_select(d, layout["col_ids"])
    return torch.where(ids < row.shape[-1] - 1, vhat.to(v.dtype), v)


def factored_features(grads: torch.Tensor, m: torch.Tensor, vhat: torch.Tensor) -> torch.Tensor:
    """The raw ``[..., N, 2 + M]`` features ``g / √(v̂+ε)``, ``m_k / √(v̂+ε)``, ``1 / √(v̂+ε)``
    from ``grads``, ``vhat [..., N]`` and the momenta ``m [..., N, M]``."""
    rs = torch.rsqrt(vhat + FACTORED_EPS).unsqueeze(-1)
    return torch.cat((grads.unsqueeze(-1) * rs, m * rs, rs), dim=-1)
