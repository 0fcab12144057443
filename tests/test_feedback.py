"""Feedback keeps hidden tests hidden: the failure message shows, the hidden test's code does not
(unless the instructor asks with --feedback-with-hidden-tests). Graded with the real grader on
a one-exercise course built here, so that the failing check is known to be a hidden one."""
import html
import re
from pathlib import Path

import nbformat
import pytest

from grader import authoring, grade, paths

ROOT = Path(__file__).resolve().parent.parent
HIDDEN_LINE = "assert _double_checked(3) == 6, 'double(3) should be 6: multiply, do not special-case 2'"
STUDENT = "def double(x):\n    return 4 if x == 2 else 0\n"


@pytest.fixture()
def tiny_course(tmp_path, monkeypatch):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    monkeypatch.setattr(paths, "SOLUTIONS", solutions)
    authoring.write("01_tiny", [
        authoring.md("# 01 Tiny\n\nGoals, prerequisites, time: none."),
        authoring.setup("import torch\ntorch.manual_seed(0)"),
        authoring.helpers("def _double_checked(x):\n    return double(x)"),
        authoring.solution("def double(x):\n    \"\"\"2 * x.\"\"\"\n    ### BEGIN SOLUTION\n"
                           "    return 2 * x\n    ### END SOLUTION", "double"),
        authoring.tests('"""double: twice its argument."""\nassert _double_checked(2) == 4, '
                        '"double(2) should be 4"\nprint("double: double(2) is 4 (visible tests)")\n'
                        f"### BEGIN HIDDEN TESTS\n{HIDDEN_LINE}\n### END HIDDEN TESTS",
                        "test_double", points=1),
    ])
    subs = tmp_path / "subs" / "ada"
    subs.mkdir(parents=True)
    nb = nbformat.read(solutions / "01_tiny.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = STUDENT
    nbformat.write(nb, subs / "01_tiny.ipynb")
    return tmp_path


def _grade(tmp, *flags):
    out = tmp / ("out" + "".join(flags))
    hidden = "--feedback-with-hidden-tests" in flags
    rows, _ = grade.grade(tmp / "subs", out, progress=False, feedback_hidden=hidden)
    return rows, visible_text((out / "feedback" / "ada" / "01_tiny.html").read_text())


def visible_text(page):
    """What a reader of the HTML sees: tags (syntax highlighting splits code into spans) gone."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


@pytest.mark.slow
def test_feedback_shows_the_message_not_the_hidden_code(tiny_course):
    rows, text = _grade(tiny_course)
    assert rows[0]["status"] == "graded" and float(rows[0]["score"]) == 0.0, rows
    assert "double(3) should be 6: multiply, do not special-case 2" in text
    assert "_double_checked(3) == 6" not in text, "the hidden test's code is in the feedback"
    assert "double(2) should be 4" in text, "the visible tests stay in the feedback"
    rows, text = _grade(tiny_course, "--feedback-with-hidden-tests")
    assert "_double_checked(3) == 6" in text
