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


@pytest.mark.slow
def test_feedback_runs_none_of_the_students_markup(tiny_course):
    """A student's script, in a markdown cell or an output, reaches the feedback as inert text;
    the course's own markdown (its <details> hints) renders as written."""
    path = tiny_course / "subs" / "ada" / "01_tiny.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(
        "My answer <img src=x onerror=\"document.title='MD-XSS'\"> <script>var MD_SCRIPT=1</script>"))
    nb.cells.append(nbformat.v4.new_code_cell(
        "from IPython.display import HTML, Javascript, display\n"
        "display(HTML(\"<script>document.title='HTML-XSS'</script><b>bold</b>\"))\n"
        "display(Javascript(\"document.title='JS-XSS'\"))"))
    nbformat.write(nb, path)
    rows, _ = _grade(tiny_course)
    page = (tiny_course / "out" / "feedback" / "ada" / "01_tiny.html").read_text()
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, re.S | re.I)
    tags = re.findall(r"<[a-zA-Z][^<>]*>", page)
    for marker in ("MD-XSS", "MD_SCRIPT", "HTML-XSS", "JS-XSS"):
        assert not any(marker in body for body in scripts), f"{marker} runs as a script"
        assert not any(marker in tag for tag in tags), f"{marker} sits in a live tag"
    assert "MD_SCRIPT" in visible_text(page), "the student's markdown is shown, as text"
    assert "Goals, prerequisites, time" in visible_text(page)
