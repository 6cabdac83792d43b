"""The layers import one way (see the README's map): a test, so that a convenient shortcut
import cannot quietly couple them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"l2o", "baselines", "meta_train", "analysis"}
FORBIDDEN = {
    "baselines": {"l2o", "meta_train", "analysis"},
    "l2o": {"meta_train", "analysis"},
    "meta_train": {"analysis"},
    "analysis": {"meta_train"},
}


def imported_first_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & FIRST_PARTY


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_first_party(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{package} must not import {sorted(FORBIDDEN[package])}: {offenders}"


def test_baselines_import_without_triton_installed():
    """Anyone can use the baselines on a machine without triton (macOS, Windows, CPU-only)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['triton'] = None  # what Python does for a package that is not there\n"
        "import torch, baselines\n"
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
        "opt = baselines.create('adam_syre', [p], lr=0.1, weight_decay=0.1); opt.step()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
