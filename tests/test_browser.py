"""The course in a real browser: JupyterLab from this venv, driven in headless Chromium.

A student opens notebooks/01 and runs everything: the first exercise stops the run with
NotImplementedError and nbgrader's Validate button is in the toolbar. The matching solutions
notebook runs to the end without an error and shows its figure. Screenshots of both land in
test-artifacts/browser/ (gitignored).

Needs /usr/bin/chromium (Debian's `chromium`; Playwright never downloads a browser here): skipped
with the reason when it is missing, a failure when CI is set. Helpers: tests/browser_helpers.py.
"""
import shutil

import pytest

import browser_helpers as bh
from grader import paths

pytestmark = pytest.mark.browser

# Notebooks a student opens in the browser test (their run-all takes seconds; 06 trains for a
# minute and is covered headless by test_notebooks.py).
BROWSER_NOTEBOOKS = ["01_gate_equations"]


@pytest.fixture(scope="module")
def lab():
    """One JupyterLab server and one Chromium for the module; both always shut down."""
    bh.require_chromium()
    for name in BROWSER_NOTEBOOKS:
        assert paths.student_path(name).exists(), f"notebooks/{name}.ipynb is missing"
        assert paths.solution_path(name).exists(), f"solutions/{name}.ipynb is missing"
    root = bh.workspace(BROWSER_NOTEBOOKS)
    try:
        with bh.lab_server(root) as (base, token):
            yield base, token
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lab_page(lab):
    base, token = lab
    with bh.chromium_page() as page:
        yield bh.LabPage(page, base, token)


def first_exercise_index(nb):
    """Cell index of the first answer cell: an nbgrader solution cell that is not a grade cell."""
    for i, cell in bh.code_cells(nb):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and not meta.get("grade"):
            return i
    raise AssertionError("the notebook has no exercise (no nbgrader solution cell)")


@pytest.mark.slow
@pytest.mark.parametrize("name", BROWSER_NOTEBOOKS)
def test_student_notebook_stops_at_first_exercise_and_validates(lab_page, name):
    path = f"notebooks/{name}.ipynb"
    n_cells = len(bh.read_notebook(paths.student_path(name))["cells"])
    lab_page.open(path, n_cells)
    seconds = lab_page.run_all()

    nb = lab_page.model()["nb"]
    exercise = first_exercise_index(nb)
    errs = bh.errors(nb)
    assert errs, f"{path}: Run All finished in {seconds:.1f} s without any error — the untouched " \
                 "exercise should raise NotImplementedError"
    where, ename, evalue = errs[0]
    assert ename == "NotImplementedError", \
        f"{path}: the first error is {ename}: {evalue} in cell {where}, not NotImplementedError"
    assert where >= exercise, \
        f"{path}: cell {where} fails before the first exercise (cell {exercise})"
    not_run = [i for i, count in bh.prompts(nb).items() if i <= where and count is None]
    assert not not_run, f"{path}: cells {not_run}, before the first failure, did not run"
    shown = lab_page.show_cell(where)
    assert shown["onScreen"] and "NotImplementedError" in shown["text"], \
        f"{path}: the NotImplementedError of cell {where} is not shown on the page: {shown}"
    lab_page.screenshot(f"{name}-student.png")

    # nbgrader's Validate button, in the notebook toolbar, as a student would click it.
    text = lab_page.validate()
    lab_page.screenshot(f"{name}-student-validate.png")
    assert "NotImplementedError" in text, \
        f"{path}: the Validation Results dialog does not report the unsolved exercise:\n{text}"


@pytest.mark.slow
@pytest.mark.parametrize("name", BROWSER_NOTEBOOKS)
def test_solutions_notebook_runs_clean_with_a_figure(lab_page, name):
    path = f"solutions/{name}.ipynb"
    n_cells = len(bh.read_notebook(paths.solution_path(name))["cells"])
    lab_page.open(path, n_cells)
    seconds = lab_page.run_all()

    nb = lab_page.model()["nb"]
    errs = bh.errors(nb)
    assert not errs, f"{path}: error output in Run All: " + \
        "; ".join(f"cell {i}: {e}: {v}" for i, e, v in errs)
    not_run = [i for i, count in bh.prompts(nb).items() if count is None]
    assert not not_run, f"{path}: cells {not_run} did not run"
    stderr = bh.stderr_texts(nb)
    assert not stderr, f"{path}: writes to stderr (shown red, like an error): {stderr[:3]}"

    with_image = [i for i, c in bh.code_cells(nb) for o in c.get("outputs", [])
                  if "image/png" in o.get("data", {})]
    assert with_image, f"{path}: no cell output holds a figure (image/png) after Run All " \
                       f"({seconds:.1f} s)"
    shown = lab_page.show_cell(with_image[0])
    assert shown["onScreen"] and shown["images"], \
        f"{path}: the figure of cell {with_image[0]} is not rendered as an image on the page"
    lab_page.screenshot(f"{name}-solutions.png")


def test_missing_chromium_skips_locally_and_fails_in_ci(monkeypatch, tmp_path):
    """Without /usr/bin/chromium: a skip that says why on a laptop, a failure in CI."""
    monkeypatch.setattr(bh, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="is not installed"):
        bh.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        bh.require_chromium()
