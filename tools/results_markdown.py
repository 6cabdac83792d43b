"""An evaluation's ``results.json`` as the Markdown tables the docs show, so that a table in the
docs is generated from the run that backs it, never typed by hand.

    python tools/results_markdown.py out/eval/heldout/results.json --criterion final
    python tools/results_markdown.py RESULTS --optimizer general --criterion final --criterion mean

Per learned optimizer: one row per case (the ratio to the best tuned contender and to its own
tuned nominal term, with the paired-bootstrap 95 % intervals of the evaluation, and who is best),
then the geometric means and cases won per run length and overall.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def _ratio(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None or not math.isfinite(value):
        return "–"
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    cell = f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"**{cell}**" if high is not None and high < 1 else cell


def _best_of_all(rows: list[dict], case: str, criterion: str) -> str:
    tuned = [
        r
        for r in rows
        if r["case"] == case and r["criterion"] == criterion and r["kind"] != "learned"
    ]
    tuned = [r for r in tuned if r["value"] is not None]
    if not tuned:
        return "–"
    best = min(tuned, key=lambda r: r["value"])
    lr = f" (lr {best['lr']:.3g})" if best.get("lr") is not None else ""
    return f"{best['optimizer']}{lr}"


def case_table(payload: dict, optimizer: str, criterion: str) -> str:
    rows = payload["rows"]
    mine = [r for r in rows if r["optimizer"] == optimizer and r["criterion"] == criterion]
    lines = [
        "| case | steps | ratio to best [95% CI] | ratio to nominal [95% CI] | best tuned contender"
        " | diverged |",
        "|---|---|---|---|---|---|",
    ]
    for r in mine:
        lines.append(
            f"| `{r['case'].split(':')[0]}{_variation(r['case'])}` | {r['steps']} | "
            f"{_ratio(r, 'ratio')} | {_ratio(r, 'ratio_nominal')} | "
            f"{_best_of_all(rows, r['case'], criterion)} | {r['diverged']}/{r['seeds']} |"
        )
    return "\n".join(lines)


def _variation(case_id: str) -> str:
    """``task@data:200,b64,x=y`` → ``,b64,x=y`` (the length has its own column)."""
    tail = case_id.split(":", 1)[1]
    return tail[tail.index(",") :] if "," in tail else ""


def summary_table(payload: dict, optimizer: str, criterion: str) -> str:
    lines = [
        "| run length | cases | geomean ratio to best | won | geomean ratio to nominal"
        " | won vs nominal | diverged runs |",
        "|---|---|---|---|---|---|---|",
    ]
    groups = [(f"{s['steps']} steps", s) for s in payload.get("summary_by_steps", [])]
    groups += [("all", s) for s in payload["summary"]]
    for label, s in groups:
        if s["optimizer"] != optimizer or s["criterion"] != criterion:
            continue
        nominal = s.get("geomean_ratio_nominal")
        lines.append(
            f"| {label} | {s['cases']} | {_num(s['geomean_ratio'])} | {s['won']}/{s['cases']} | "
            f"{_num(nominal)} | {s['won_vs_nominal']}/{s['cases']} | {s['diverged_runs']} |"
        )
    return "\n".join(lines)


def _num(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--optimizer", action="append", help="learned optimizer(s) (default: all)")
    p.add_argument("--criterion", action="append", help="criteria (default: all)")
    args = p.parse_args(argv)
    try:
        payload = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    optimizers = args.optimizer or list(payload["learned"])
    criteria = args.criterion or list(payload["criteria"])
    seeds = len(payload["seeds"])
    for name in optimizers:
        for criterion in criteria:
            print(f"#### `{name}`, {criterion} ({seeds} seeds, suite {payload['suite']})\n")
            print(case_table(payload, name, criterion) + "\n")
            print(summary_table(payload, name, criterion) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
