"""Does a learned optimizer beat tuned baselines, on which tasks, and for how long?

    python meta_train/evaluate.py lstm-mnist --suite indist
    python meta_train/evaluate.py lstm-mnist mlp-mnist --suite long --out out/eval/long
    python meta_train/evaluate.py runs/default-20261124-101500 --suite generalization --quick
    python meta_train/evaluate.py lstm-mnist --suite indist --baselines sgdm,adam,lion,gyro_adam
    python meta_train/evaluate.py lstm-mnist --suite indist --criterion paper50   # the paper's

OPT is a pretrained name, a ``best.pt``/``last.pt`` path or a run folder. Every optimizee trains
through ``l2o.training.train_optimizee``; each baseline (default: sgdm, adam, adamw_cosine,
muon_cosine, sf_adamw), and the untrained nominal term of each OPT that has one (``nominal``;
``--no-nominal`` leaves it out), is tuned per case, on seeds disjoint from the evaluation seeds,
separately for each reported criterion (``final``: mean training loss over the last 10% of steps;
``mean``: over the horizon; ``paper50``: the paper's sum of the first 50). The table gives each
OPT's ratio to the best tuned contender and to its own nominal term. Writes ``summary.csv``,
``overall.csv``, ``results.json``, ``table.txt``, ``loss_curves.png`` and ``ratios.png``
into ``--out`` (default ``out/eval/SUITE``) and prints the table.

Every input (``--out`` included) is checked before the first case; a bad one is one line on
stderr and exit code 2. Each finished case is saved at once to ``--out``'s
``partial_results.pt``: after a crash or a kill, the same command continues with the cases not
yet finished (``--restart`` discards them; other arguments with the same ``--out`` are refused).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # see run.py: this folder's module names must not shadow packages
    try:
        import meta_train  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import signal
import threading
from collections.abc import Callable

import torch

from meta_train.evaluation import heldout_log
from meta_train.evaluation.contenders import (
    DEFAULT_BASELINES,
    available_baselines,
    check_baselines,
    resolve_learned,
)
from meta_train.evaluation.criteria import CRITERIA, DEFAULT_CRITERIA, check_criteria
from meta_train.evaluation.partial import FILE as PROGRESS_FILE
from meta_train.evaluation.partial import CaseStore, check_output_folder
from meta_train.evaluation.report import format_table, heldout_findings, write_outputs
from meta_train.evaluation.rows import rows, summary
from meta_train.evaluation.runner import run_suite, suite_seeds
from meta_train.evaluation.suites import available_suites, load_suite
from meta_train.evaluation.tuning import LogGrid

EXIT_USAGE = 2
EXIT_IO = 74  # a write failed during or after the work (the finished cases are kept)
RUN_SUITES = ("indist", "long")  # what the default meta-training run ends with, in quick mode


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python meta_train/evaluate.py",
        description="Evaluate learned optimizers against baselines tuned for the reported "
        "criterion, on a suite of tasks and horizons.",
    )
    p.add_argument(
        "opts",
        nargs="*",
        metavar="OPT",
        help="pretrained name, checkpoint or run dir; untrained:OPT: that optimizer with its "
        "learned parts at their init (a general's nominal term at the recipe's step size)",
    )
    p.add_argument(
        "--suite",
        default="indist",
        help=f"a name ({', '.join(available_suites())}) or a YAML path (default: indist)",
    )
    p.add_argument("--quick", action="store_true", help="the suite's fewer seeds and cases")
    p.add_argument(
        "--baselines",
        type=_csv,
        default=list(DEFAULT_BASELINES),
        help=f"comma-separated (default: {','.join(DEFAULT_BASELINES)}); any of: "
        f"{', '.join(available_baselines())}",
    )
    p.add_argument(
        "--criterion",
        type=_csv,
        default=list(DEFAULT_CRITERIA),
        help=f"comma-separated criteria to tune for and report (default: "
        f"{','.join(DEFAULT_CRITERIA)}); any of {', '.join(CRITERIA)}",
    )
    p.add_argument(
        "--no-nominal",
        action="store_true",
        help="leave out the tuned untrained nominal term of learned optimizers that have one",
    )
    p.add_argument("--seeds", type=int, default=None, help="evaluation seeds (suite's default)")
    p.add_argument("--tune-seeds", type=int, default=None, help="tuning seeds (suite's default)")
    p.add_argument(
        "--lr-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="initial lr grid, widened automatically (default: 1e-4 10; --quick: 1e-3 1)",
    )
    p.add_argument("--per-decade", type=int, default=2, help="grid points per decade (default 2)")
    p.add_argument("--out", default=None, help="output folder (default: out/eval/SUITE)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard the finished cases saved in --out by an earlier, interrupted run",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start no new case after this many minutes; the outputs cover the finished cases "
        "and the same command later continues with the rest",
    )
    p.add_argument(
        "--skip-cases",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[],
        metavar="N,...",
        help="case numbers (1-based, as printed) not to run: listed as skipped; the finished "
        "cases saved in --out stay valid",
    )
    p.add_argument("--list-suites", action="store_true", help="list suites and exit")
    return p.parse_args(argv)


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: a KeyboardInterrupt, which the held-out log records as interrupted."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_suites:
        for name in available_suites():
            print(f"{name}: {load_suite(name).description}")
        return 0
    try:
        suite = load_suite(args.suite)
        learned = [resolve_learned(spec) for spec in args.opts]
        baselines = check_baselines(args.baselines)
        criteria = check_criteria(args.criterion)
        grid = None
        if args.lr_range is not None or args.per_decade != LogGrid.per_decade:
            lo, hi = args.lr_range or (LogGrid.lo, LogGrid.hi)
            grid = LogGrid(lo, hi, args.per_decade)
        if args.time_budget is not None and not args.time_budget > 0:
            raise ValueError(
                f"--time-budget must be a positive number of minutes, got {args.time_budget}"
            )
        if args.threads < 1:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        out = Path(args.out) if args.out else Path("out") / "eval" / suite.name
        check_output_folder(out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    # a run in the background ignores Ctrl-C; `kill` (SIGTERM) then ends it as an interruption,
    # so the held-out log still records it and the finished cases stay saved
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        return _evaluate(args, suite, learned, baselines, criteria, grid, out, log)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _evaluate(args, suite, learned, baselines, criteria, grid, out, log) -> int:
    """The evaluation of ``main``'s checked arguments: run, report, log."""
    heldout = HeldoutRun.start(suite, learned, args, baselines, criteria, log)
    try:
        ev = run_suite(
            learned,
            suite,
            quick=args.quick,
            criteria=criteria,
            baselines=baselines,
            grid=grid,
            seeds=args.seeds,
            tune_seeds=args.tune_seeds,
            log=log,
            nominal=not args.no_nominal,
            progress=CaseStore(out, restart=args.restart),
            time_budget_s=None if args.time_budget is None else args.time_budget * 60,
            skip_cases=args.skip_cases,
        )
    except ValueError as exc:
        heldout.end("failed", error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # saving a finished case (disk full, read-only): the others are kept
        heldout.end("failed", error=str(exc))
        return _io_error(exc, out, "cannot save a finished case")
    except BaseException as exc:  # interrupted (Ctrl-C) or a bug: the log still says so
        heldout.end("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    table = rows(ev)  # the rows' bootstrap CIs, computed once for the table, files and log
    print(format_table(ev, table))
    try:
        paths = write_outputs(ev, out, plot=not args.no_plot, table=table)
    except OSError as exc:
        heldout.end("failed", error=str(exc))
        return _io_error(exc, out, "cannot write the outputs")
    heldout.end("finished", out=str(out), **heldout_findings(ev, table))
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


class HeldoutRun:
    """The log entry of a held-out suite's run (``heldout_log``); a no-op for other suites."""

    def __init__(self, path: Path | None, entry: dict | None) -> None:
        self.path, self.entry = path, entry

    @classmethod
    def start(cls, suite, learned, args, baselines, criteria, log) -> HeldoutRun:
        if not (suite.heldout and suite.source):
            return cls(None, None)
        seeds, tune_seeds = suite_seeds(suite, args.quick, args.seeds, args.tune_seeds)
        entry = heldout_log.start_entry(
            suite.source,
            {lrn.name: lrn.source for lrn in learned},
            quick=args.quick,
            seeds=seeds,
            tune_seeds=tune_seeds,
            baselines=baselines,
            criteria=criteria,
        )
        path = heldout_log.log_path(suite.source)
        heldout_log.append_entry(path, entry)
        log(
            f"{suite.name} is a HELD-OUT suite: it reports, it must never be used to choose a "
            f"recipe, hyperparameter or checkpoint; this run is logged in {path}"
        )
        return cls(path, entry)

    def end(self, status: str, **found) -> None:
        if self.entry is not None:
            heldout_log.append_entry(
                self.path, heldout_log.finish_entry(self.entry, status, **found)
            )
            self.entry = None


def _io_error(exc: OSError, out: Path, what: str) -> int:
    """One line for a write that failed: the cause, and that the cases saved before are kept."""
    print(
        f"error: {what} in {out}: {exc.strerror or exc} ({exc.filename or out}); the cases "
        f"finished before are kept in {out / PROGRESS_FILE}: fix the cause and run the same "
        "command again to go on",
        file=sys.stderr,
    )
    return EXIT_IO


def evaluate_run(
    checkpoint: str | Path,
    out_dir: str | Path,
    suites: tuple[str, ...] = RUN_SUITES,
    plot: bool = True,
    log: Callable[[str], None] = print,
    *,
    quick: bool = True,
    seeds: int | None = None,
    baselines: tuple[str, ...] = DEFAULT_BASELINES,
) -> tuple[dict[str, Path], dict[str, float]]:
    """The end of a meta-training run: each suite (quick by default) for the run's checkpoint,
    into ``out_dir/SUITE``. Returns the files and a flat summary for the run's tracker. A suite's
    finished cases are saved as they finish, so a resumed run re-runs only the others (the
    cases of another checkpoint are discarded)."""
    learned = [resolve_learned(str(checkpoint), name=f"l2o ({Path(checkpoint).stem})")]
    files, scalars = {}, {}
    for name in suites:
        progress = CaseStore(Path(out_dir) / name, replace_other=True)
        ev = run_suite(
            learned,
            name,
            quick=quick,
            seeds=seeds,
            baselines=baselines,
            log=log,
            progress=progress,
        )
        table = rows(ev)
        print(format_table(ev, table))
        for kind, path in write_outputs(ev, Path(out_dir) / name, plot=plot).items():
            files[f"{name}/{kind}"] = path
        for s in summary(ev, table):
            scalars[f"eval/{name}/{s['criterion']}/geomean_ratio"] = s["geomean_ratio"]
            scalars[f"eval/{name}/{s['criterion']}/won"] = s["won"]
            if s["nominal"]:
                key = f"eval/{name}/{s['criterion']}/geomean_ratio_nominal"
                scalars[key] = s["geomean_ratio_nominal"]
    return files, scalars


if __name__ == "__main__":
    sys.exit(main())
