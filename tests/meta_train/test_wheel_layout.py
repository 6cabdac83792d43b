"""Installed from a wheel, ``meta_train`` finds the YAML configs that pyproject force-includes
as ``meta_train/_configs``: named meta-training configs and evaluation suites, looked up from
modules that sit in subpackages (``configuration/``, ``evaluation/``) one folder below the
package."""

import os
import shutil
import tomllib
from pathlib import Path

from python_process import run_python

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
from meta_train.configuration.schema import config_dirs, load_config
from meta_train.evaluation.suites import load_suite, suites_dir
print(config_dirs()[0]); print(suites_dir())
load_config("tiny"); load_suite("indist")
"""


def test_an_installed_package_finds_its_configs(tmp_path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "meta_train" in wheel["packages"]
    site = tmp_path / "site"
    for package in wheel["packages"]:  # the wheel's packages, without the checkout beside them
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / package, site / package, ignore=skip)
    for source, target in wheel["force-include"].items():
        shutil.copytree(ROOT / source, site / target)
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = run_python("-c", PROBE, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    configs, suites = done.stdout.split()
    assert Path(configs) == site / "meta_train" / "_configs" / "meta_train"
    assert Path(suites) == site / "meta_train" / "_configs" / "eval"
