"""The README is the front door: short, every link resolves, every code block is marked, the
quick start is what CI runs, and every `run` example runs as written (tools/readme_examples.py;
the `long` ones run in .ci/run)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "readme_examples", ROOT / "tools" / "readme_examples.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


tool = _load_tool()
EXAMPLES = tool.parse(README.read_text(encoding="utf-8"))


def test_readme_is_at_most_300_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 300


def test_every_code_block_is_marked():
    assert EXAMPLES, "the README has no code blocks"
    assert tool.marker_problems(EXAMPLES) == []


def test_a_block_without_a_marker_is_reported():
    text = "text\n\n```bash\necho hi\n```\n<!-- example: long -->\n```bash\nx\n```\n"
    examples = tool.parse(text)
    problems = tool.marker_problems(examples)
    assert len(problems) == 2
    assert "README.md:3: no <!-- example: KIND --> marker" in problems[0]
    assert "README.md:7: a 'long' marker says why" in problems[1]


def test_an_unclosed_block_is_an_error():
    with pytest.raises(ValueError, match=r"README\.md:1: code block never closed"):
        tool.parse("```bash\necho hi\n")


def test_the_quick_start_commands_are_what_ci_runs():
    quick_start = [ex for ex in EXAMPLES if ex.kind == "ci-commands"]
    assert len(quick_start) == 1
    found = tool.commands(quick_start[0])
    for command in ('pip install -e ".[dev]"', "python meta_train/run.py", "pytest"):
        assert command in found, f"the quick start no longer says {command!r}"
    # .ci/run calls the interpreter "$PY" before the virtual environment exists (python3 where
    # there is no `python`)
    ci = CI_SCRIPT.read_text(encoding="utf-8").replace('"$PY"', "python")
    ci_lines = {re.sub(r"^time\s+", "", line.strip()) for line in ci.splitlines()}
    missing = [command for command in found if command not in ci_lines]
    assert not missing, f".ci/run does not run the README's quick-start commands {missing}"


def test_ci_runs_the_long_examples_and_builds_the_docs():
    ci_lines = [line.strip() for line in CI_SCRIPT.read_text(encoding="utf-8").splitlines()]
    assert "time python tools/readme_examples.py --long" in ci_lines
    assert any(line.startswith("time mkdocs build --strict") for line in ci_lines)


def test_readme_links_resolve():
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t[0] != "#"]
    assert local, "the README links to no page of the documentation"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_anchors_resolve():
    text = README.read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, flags=re.M)
    }
    anchors = re.findall(r"\]\(#([^)]+)\)", text)
    assert [a for a in anchors if a not in headings] == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "example", [ex for ex in EXAMPLES if ex.kind == "run"], ids=lambda ex: ex.where
)
def test_readme_example_runs(example):
    done = tool.run_in_sandbox(example)
    assert done.returncode == 0, f"{example.where} failed:\n{done.stdout[-6000:]}"
