"""Record how any ``torch.optim.Optimizer`` moves an optimizee: one compact file per run.

The recorder plugs into :func:`l2o.training.train_optimizee` (the one evaluation path) through its
factory and callback, so a :class:`LearnedOptimizer`, a baseline and a torch optimizer are recorded
by the same code on the same initial weights and minibatches. Indexing: step t takes θ_t to
θ_{t+1} = θ_t + Δθ_t using the minibatch gradient g_t at θ_t (t = 0 … steps−1).

Streams (each recorded at the steps the :class:`RecordingPlan` asks for):

- ``symmetry`` (every step, cheap): per structure, deviations of −Δθ_t and g_t at θ_t
  (see :mod:`analysis.symmetry_traces`), plus the loss;
- ``trajectory``: θ_t, g_t and Δθ_t as flat float32 vectors;
- ``per_sample``: per-sample gradients at θ_t on step t's minibatch (``vmap(grad)``; not defined
  for BatchNorm models, whose loss couples the samples);
- ``probe``: at the state after s steps (parameters *and* optimizer state), the gradients and
  the updates Δθ the optimizer would take on each of several independent minibatches: the
  optimizer is deep-copied with the model for every probe, so the run itself is untouched. These
  are the samples for the noise statistics (tail index, covariance) of gradients vs updates.

File format: a magic line, then frames of ``[8-byte length][torch.save payload]``, each payload
a dict of tensors, lists, strings and numbers read back with ``torch.load(weights_only=True)``.
Frames are appended as buffers fill (``chunk_mb``), so long runs never hold the whole recording;
the file is written through ``l2o.io.atomic_open`` (a temporary beside ``PATH``, renamed when
complete): a run killed mid-way leaves that temporary, whose frames up to the kill are readable.
A file at ``PATH`` is therefore a finished run; :func:`reusable_recording` reuses it when its
meta's ``settings`` (what determines the run, chosen by the caller) match, so an interrupted
analysis continues where it stopped. The summary frame holds the run's own ``run_seconds``.

What Δθ is for optimizers with more than one point (recorded as it is applied, nothing else):

- schedule-free AdamW (``sf_adamw``) trains in train mode, where the model's parameters hold
  ``y`` (where gradients are taken): θ_t is y_t and Δθ_t = y_{t+1} − y_t, the change of the
  parameters the model trains with, not of the returned average ``x`` (the test metrics are at
  ``x``: ``train_optimizee`` switches to eval mode after the last step). Probes clone the
  optimizer in train mode, so they measure the same Δy;
- Muon (``muon``, a composite baseline: Muon's orthogonalized step on the 2-D weight matrices,
  AdamW on biases and other tensors) is one optimizer to the recorder: Δθ is the whole
  parameter vector's change, the matrices' Muon steps and the rest's AdamW steps together.
"""

from __future__ import annotations

import copy
import io
import os
import struct
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from analysis.symmetry_traces import step_deviation_table
from l2o.io import atomic_open
from l2o.symmetry import SymmetryStructure, find_structures
from l2o.tasks import Task
from l2o.training import TrainResult, train_optimizee

MAGIC = b"L2OREC1\n"
FORMAT_VERSION = 1
_LEN = struct.Struct("<Q")


# ---------------------------------------------------------------------------------------------
# File format
# ---------------------------------------------------------------------------------------------


class RecordingWriter:
    """Buffers rows per stream and appends them to the file as frames."""

    def __init__(self, path: str | os.PathLike, meta: Mapping, chunk_mb: float = 64.0) -> None:
        self.path = Path(path)
        self._writing = atomic_open(self.path, "wb")  # entered here, exited in close()/abort()
        self._file = self._writing.__enter__()
        self._file.write(MAGIC)
        self._frame({"kind": "meta", "format_version": FORMAT_VERSION, **meta})
        self._chunk_bytes = int(chunk_mb * 2**20)
        self._buffers: dict[str, dict[str, list]] = {}
        self._buffered = 0

    def write_frame(self, kind: str, **payload) -> None:
        """An extra frame of metadata (e.g. the symmetry structures found once the model exists)."""
        self._frame({"kind": kind, **payload})

    def _frame(self, payload: Mapping) -> None:
        buf = io.BytesIO()
        torch.save(dict(payload), buf)
        data = buf.getvalue()
        self._file.write(_LEN.pack(len(data)))
        self._file.write(data)

    def append(self, stream: str, step: int, **values: Tensor | float) -> None:
        rows = self._buffers.setdefault(stream, {"steps": []})
        rows["steps"].append(int(step))
        for key, value in values.items():
            value = torch.as_tensor(value).detach().cpu()
            rows.setdefault(key, []).append(value)
            self._buffered += value.numel() * value.element_size()
        if self._buffered >= self._chunk_bytes:
            self.flush()

    def flush(self) -> None:
        for stream, rows in self._buffers.items():
            if not rows["steps"]:
                continue
            payload = {"kind": "chunk", "stream": stream, "steps": torch.tensor(rows["steps"])}
            for key, values in rows.items():
                if key != "steps":
                    payload[key] = torch.stack(values)
            self._frame(payload)
        self._buffers = {}
        self._buffered = 0
        self._file.flush()

    def write_summary(self, **summary) -> None:
        self.flush()
        self._frame({"kind": "summary", **summary})

    def close(self) -> Path:
        self.flush()
        self._writing.__exit__(None, None, None)  # fsync, then rename over ``path``
        return self.path

    def abort(self) -> None:
        """Discard the unfinished recording (its temporary is removed)."""
        if not self._file.closed:
            self._writing.__exit__(RuntimeError, RuntimeError("recording aborted"), None)


def iter_frames(path: str | os.PathLike) -> Iterator[dict]:
    """Frames of a recording, one at a time (weights_only loading; a truncated tail is skipped
    with a warning, so a crashed run's prefix stays readable)."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path} is not an l2o recording (bad magic)")
        while True:
            head = f.read(_LEN.size)
            if not head:
                return
            if len(head) < _LEN.size:
                warnings.warn(f"{path}: truncated frame header ignored", stacklevel=2)
                return
            (size,) = _LEN.unpack(head)
            data = f.read(size)
            if len(data) < size:
                warnings.warn(f"{path}: truncated last frame ignored", stacklevel=2)
                return
            yield torch.load(io.BytesIO(data), weights_only=True)


@dataclass
class Recording:
    """A loaded recording: ``meta``, ``streams[name][key]`` stacked over steps, ``summary``."""

    meta: dict
    streams: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def param_names(self) -> list[str]:
        return list(self.meta["param_names"])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector (..., d) into named tensors of the recorded shapes."""
        out, start = {}, 0
        for name, shape in zip(self.meta["param_names"], self.meta["param_shapes"], strict=True):
            size = 1
            for s in shape:
                size *= s
            out[name] = flat[..., start : start + size].reshape(*flat.shape[:-1], *shape)
            start += size
        return out

    def rows(self, stream: str) -> int:
        return int(self.streams[stream]["steps"].shape[0]) if stream in self.streams else 0


def load_recording(path: str | os.PathLike) -> Recording:
    meta: dict | None = None
    parts: dict[str, dict[str, list[Tensor]]] = {}
    summary: dict = {}
    for frame in iter_frames(path):
        kind = frame.pop("kind")
        if kind == "meta":
            meta = frame
        elif kind == "chunk":
            stream = frame.pop("stream")
            for key, value in frame.items():
                parts.setdefault(stream, {}).setdefault(key, []).append(value)
        elif kind == "summary":
            summary = frame
        elif meta is not None:
            meta[kind] = frame
    if meta is None:
        raise ValueError(f"{path}: no metadata frame")
    streams = {s: {k: torch.cat(v) for k, v in cols.items()} for s, cols in parts.items()}
    return Recording(meta, streams, summary)


# ---------------------------------------------------------------------------------------------
# Recording a training run
# ---------------------------------------------------------------------------------------------


@dataclass
class RecordingPlan:
    """What to record, and when (step indices as in the module docstring)."""

    trajectory_steps: Sequence[int] = ()
    per_sample_steps: Sequence[int] = ()
    per_sample_count: int = 128
    probe_steps: Sequence[int] = ()
    probe_batches: int = 16
    probe_seed: int = 1_000_003
    symmetry: bool = True
    structures: Sequence[SymmetryStructure] | None = None
    chunk_mb: float = 64.0

    def __post_init__(self) -> None:
        if self.probe_batches < 2 and self.probe_steps:
            raise ValueError("probe_batches must be ≥ 2 to measure noise across minibatches")
        if self.per_sample_count < 2 and self.per_sample_steps:
            raise ValueError("per_sample_count must be ≥ 2")
        for name in ("trajectory_steps", "per_sample_steps", "probe_steps"):
            steps = list(getattr(self, name))
            if any(s < 0 for s in steps):
                raise ValueError(f"{name} must be non-negative, got {steps}")
            setattr(self, name, tuple(sorted(set(steps))))


def _flat(tensors) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).float()


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Recorder:
    """Callback + factory wrapper for ``train_optimizee`` that streams a :class:`Recording`.

    ``make_optimizer = recorder.wrap(make_optimizer)`` captures θ_0 (and probes step 0);
    ``callback=recorder`` records after every optimizer step.
    """

    def __init__(
        self,
        task: Task,
        writer: RecordingWriter,
        plan: RecordingPlan,
        data,
        template: nn.Module,
    ) -> None:
        self.task, self.writer, self.plan, self.data = task, writer, plan, data
        self.template = template  # same architecture: runs probes functionally before training
        self.structures: list[SymmetryStructure] = []
        self._theta: Tensor | None = None  # θ_t and g_t, captured just before optimizer.step
        self._grad: Tensor | None = None
        self._captured = False
        self._model: nn.Module | None = None
        self._names: list[str] = []
        self._probe_sampler = None
        self._warned_per_sample = False

    # -- setup --------------------------------------------------------------------------------
    def wrap(self, make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]):
        def factory(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            optimizer = make_optimizer(params)
            if 0 in self.plan.probe_steps:  # θ_0 and a fresh optimizer state
                self._ensure_probe_sampler()
                self._probe(0, self.template, params, optimizer)
            # θ_t and g_t are read right before each step: an optimizer that edits .grad in
            # place (projections, clipping) cannot change what is recorded as the gradient
            # (flattened in the model's parameter order, whatever the optimizer's groups are)
            optimizer.register_step_pre_hook(lambda *_: self._before_step(params))
            return optimizer

        return factory

    def _before_step(self, params: list[nn.Parameter]) -> None:
        # torch runs step pre-hooks again when a subclass's step calls super().step(): keep
        # the first capture of each step (the gradient as training produced it)
        if self._captured:
            return
        self._captured = True
        self._theta = _flat(params)
        self._grad = _flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in params)

    def _ensure_probe_sampler(self) -> None:
        if self._probe_sampler is None:
            self._probe_sampler = self.data.sampler(self.task.batch_size, self.plan.probe_seed)

    def _bind(self, model: nn.Module) -> None:
        self._model = model
        self._names = [n for n, _ in model.named_parameters()]
        if self.plan.symmetry:
            self.structures = find_structures(model, override=self.plan.structures)
        self.writer.write_frame(
            "structures",
            labels=[s.label for s in self.structures],
            kinds=[s.kind for s in self.structures],
        )

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, start = {}, 0
        for name, p in self._model.named_parameters():
            out[name] = flat[start : start + p.numel()].view_as(p)
            start += p.numel()
        return out

    # -- per step -----------------------------------------------------------------------------
    def __call__(self, step, model, optimizer, loss, x, y) -> None:
        if self._model is None:
            self._bind(model)
        theta_before, g = self._theta, self._grad
        self._captured = False
        theta_after = _flat(model.parameters())
        delta = theta_after - theta_before
        if self.plan.symmetry and self.structures:
            table = step_deviation_table(
                self.structures,
                self._unflatten(theta_before),
                self._unflatten(delta),
                self._unflatten(g),
            )
            self.writer.append("symmetry", step, table=table, loss=float(loss))
        else:
            self.writer.append("symmetry", step, loss=float(loss))
        if step in self.plan.trajectory_steps:
            self.writer.append("trajectory", step, params=theta_before, grads=g, updates=delta)
        if step in self.plan.per_sample_steps:
            self._per_sample(step, model, theta_before, x, y)
        if step + 1 in self.plan.probe_steps:
            self._ensure_probe_sampler()
            self._probe(step + 1, model, list(model.parameters()), optimizer)

    def _per_sample(self, step, model, theta_before, x, y) -> None:
        if _has_batchnorm(model):
            if not self._warned_per_sample:
                warnings.warn(
                    "per-sample gradients are not defined for BatchNorm models (the batch "
                    "statistics couple the samples); use the probe stream instead",
                    stacklevel=2,
                )
                self._warned_per_sample = True
            return
        params = {k: v.detach() for k, v in self._unflatten(theta_before).items()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        task = self.task

        def sample_loss(p, xi, yi):
            logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
            return task.loss(logits, yi.unsqueeze(0))

        n = min(self.plan.per_sample_count, x.shape[0])
        per = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x[:n], y[:n])
        flat = torch.cat([per[name].reshape(n, -1) for name in self._names], dim=1)
        self.writer.append("per_sample", step, grads=flat.float())

    def _probe(self, step, model, params, optimizer) -> None:
        """Updates and gradients on independent minibatches from one (θ, optimizer state):
        each probe deep-copies the parameters together with the optimizer (so its state keeps
        pointing at the copies) and runs the model functionally on them."""
        names = [n for n, _ in model.named_parameters()]
        buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
        grads, updates = [], []
        for _ in range(self.plan.probe_batches):
            xp, yp = self._probe_sampler.next()
            copies, opt = clone_optimizer(params, optimizer)
            before = _flat(copies)
            opt.zero_grad(set_to_none=True)
            logits = functional_call(model, ({**dict(zip(names, copies)), **buffers}), (xp,))
            self.task.loss(logits, yp).backward()
            grads.append(_flat(p.grad for p in copies))
            opt.step()
            updates.append(_flat(copies) - before)
        self.writer.append("probe", step, grads=torch.stack(grads), updates=torch.stack(updates))


def clone_optimizer(
    params: Sequence[Tensor], optimizer: torch.optim.Optimizer
) -> tuple[list[Tensor], torch.optim.Optimizer]:
    """Deep copies of ``params`` and of ``optimizer`` whose state and groups point at them.

    Copies the optimizer's whole ``__dict__`` rather than calling ``copy.deepcopy(optimizer)``:
    ``torch.optim.Optimizer.__getstate__`` keeps only defaults, state and param_groups, which
    would drop attributes a subclass needs (anyone's optimizer, not only ours). Step hooks are
    not copied (the recorder's own would otherwise be deep-copied with it).
    """
    memo: dict[int, object] = {}
    for hooks in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks"):
        if hasattr(optimizer, hooks):
            memo[id(getattr(optimizer, hooks))] = type(getattr(optimizer, hooks))()
    copies = copy.deepcopy(list(params), memo)
    clone = object.__new__(type(optimizer))
    clone.__dict__ = copy.deepcopy(optimizer.__dict__, memo)
    return copies, clone


def record_run(
    task: Task,
    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    steps: int,
    path: str | os.PathLike,
    plan: RecordingPlan | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    meta: Mapping | None = None,
    data=None,
) -> tuple[TrainResult, Path]:
    """Train a fresh optimizee of ``task`` with ``make_optimizer`` through ``train_optimizee``
    and record it to ``path`` (one file). Returns the training result and the file's path."""
    plan = plan or RecordingPlan()
    for name in ("trajectory_steps", "per_sample_steps"):
        late = [s for s in getattr(plan, name) if s >= steps]
        if late:
            raise ValueError(f"{name} {late} are beyond the last step {steps - 1}")
    late = [s for s in plan.probe_steps if s > steps]
    if late:
        raise ValueError(f"probe_steps {late} are beyond {steps} (the state after the last step)")
    data = data if data is not None else task.load_data(device)
    template = task.make_model(0, device)
    info = {
        "task": task.name,
        "dataset": task.dataset_name,
        "steps": int(steps),
        "seed": int(seed),
        "param_names": [n for n, _ in template.named_parameters()],
        "param_shapes": [list(p.shape) for _, p in template.named_parameters()],
        **dict(meta or {}),
    }
    writer = RecordingWriter(path, info, chunk_mb=plan.chunk_mb)
    recorder = Recorder(task, writer, plan, data, template)
    start = time.perf_counter()
    try:
        result = train_optimizee(
            task,
            recorder.wrap(make_optimizer),
            steps,
            seed=seed,
            device=device,
            callback=recorder,
            data=data,
        )
        writer.write_summary(
            train_losses=result.train_losses,
            test_loss=float(result.test_loss),
            test_acc=float(result.test_acc),
            diverged=bool(result.diverged),
            run_seconds=time.perf_counter() - start,
        )
    except BaseException:
        writer.abort()
        raise
    return result, writer.close()


def reusable_recording(path: str | os.PathLike, settings: str) -> Recording | None:
    """The finished recording at ``path`` if its meta's ``settings`` equal ``settings``; None
    when there is none, it was made with other settings, or it cannot be read (then the caller
    records the run again, replacing it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        meta = next(iter_frames(path))
        if meta.get("kind") != "meta" or meta.get("settings") != settings:
            return None
        rec = load_recording(path)
    except (OSError, ValueError, RuntimeError, StopIteration, EOFError):
        return None
    return rec if "run_seconds" in rec.summary else None


def recorded_result(rec: Recording) -> TrainResult:
    """The training result a finished recording's summary holds."""
    s = rec.summary
    return TrainResult(
        train_losses=torch.as_tensor(s["train_losses"]),
        test_loss=float(s["test_loss"]),
        test_acc=float(s["test_acc"]),
        diverged=bool(s["diverged"]),
    )
