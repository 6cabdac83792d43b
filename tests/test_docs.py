"""The documentation site builds with warnings as errors: a broken link, anchor, included fragment
or API reference fails here (mkdocs is in the `dev` extra: no skip), and it loads nothing from
another site."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict_and_self_contained(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:]

    # the API reference is rendered from the docstrings, every package's page with its submodules
    for package in ("l2o", "baselines", "meta_train", "analysis"):
        page = (site / "api" / package / "index.html").read_text(encoding="utf-8")
        assert page.count(f'id="{package}.') > 20, f"the {package} API page is nearly empty"
    l2o_page = (site / "api" / "l2o" / "index.html").read_text(encoding="utf-8")
    assert 'id="l2o.optimizers.wrapper.LearnedOptimizer"' in l2o_page

    # no script, style sheet or font from a CDN: the site works without a network
    fetched = [
        f"{page.relative_to(site)}: {match}"
        for page in site.rglob("*.html")
        for match in re.findall(
            r"<(?:script|link)\b[^>]*(?:src|href)=\"(?:https?:)?//[^\"]+\"",
            page.read_text(encoding="utf-8"),
        )
    ]
    assert fetched == []
