"""Every notebook, generically: it runs, it is released in sync, it leaks nothing, nbgrader grades it.

Per-notebook behaviour (reference code against PyTorch, wrong answers scoring less) lives in
tests/test_nbNN_*.py.
"""
import ast
import re

import nbformat
import pytest

from grader import paths, release
from grader.course_dir import Course

NAMES = paths.assignments()
BLOCK = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)(.*?)### END \1", re.S)


def nbgrader_meta(cell):
    return cell.metadata.get("nbgrader", {})


def read(path):
    return nbformat.read(path, as_version=4)


def test_course_has_all_eight_notebooks():
    assert [n[:2] for n in NAMES] == ["01", "02", "03", "04", "05", "06", "07", "08"], NAMES


# ---------------------------------------------------------------- structure (fast)

@pytest.mark.parametrize("name", NAMES)
def test_grade_cells_have_points_and_unique_ids(name):
    nb = read(paths.solution_path(name))
    ids = [nbgrader_meta(c)["grade_id"] for c in nb.cells if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), f"duplicate grade_id in {name}"
    grade_cells = [c for c in nb.cells if nbgrader_meta(c).get("grade")]
    assert grade_cells, f"{name} has no grade cell"
    for cell in grade_cells:
        meta = nbgrader_meta(cell)
        assert meta.get("grade_id"), f"a grade cell in {name} has no grade_id"
        assert meta.get("points", 0) > 0, f"grade cell {meta['grade_id']} in {name} has no points"
        if cell.cell_type == "code" and not meta.get("solution"):
            assert "### BEGIN HIDDEN TESTS" in cell.source, \
                f"grade cell {meta['grade_id']} in {name} has no hidden tests"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_shape(name):
    """Spec §3: goals up front, a tagged setup cell, a recap and common-mistakes box at the end,
    no absolute paths, stripped outputs."""
    nb = read(paths.solution_path(name))
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "title first"
    head = "\n".join(c.source for c in nb.cells[:3] if c.cell_type == "markdown").lower()
    for word in ("goal", "prerequisite", "time"):
        assert word in head, f"{name}: the opening cells should state {word}s"
    setup = [c for c in nb.cells if "setup" in c.metadata.get("tags", [])]
    assert len(setup) == 1 and setup[0].cell_type == "code", f"{name}: exactly one setup cell"
    assert "manual_seed" in setup[0].source, f"{name}: the setup cell fixes the seed"
    tail = "\n".join(c.source for c in nb.cells[-4:] if c.cell_type == "markdown").lower()
    assert "recap" in tail and "mistake" in tail, f"{name}: end with a recap and common mistakes"
    for cell in nb.cells:
        assert not re.search(r"['\"](/work|/home|/root|/tmp|[A-Z]:\\)", cell.source), \
            f"{name}: absolute path in a cell"
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, \
                f"{name}: outputs must be stripped in solutions/"


def _visible_part(source):
    return source.split("### BEGIN HIDDEN TESTS")[0]


def _grade_cells(nb):
    return [c for c in nb.cells if nbgrader_meta(c).get("grade") and c.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_grade_cells_say_what_they_check_and_end_in_a_statement(name):
    """Each grade cell opens with a one-line docstring, prints one success line in its visible
    part, and ends in a statement (nbgrader would read a displayed number as a partial score),
    in the solution and in the student copy."""
    for path in (paths.solution_path(name), paths.student_path(name)):
        for cell in _grade_cells(read(path)):
            gid = nbgrader_meta(cell)["grade_id"]
            tree = ast.parse(cell.source)
            first = tree.body[0] if tree.body else None
            assert isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                and isinstance(first.value.value, str), f"{name} {gid}: no docstring first"
            doc = first.value.value.strip()
            assert doc and "\n" not in doc, f"{name} {gid}: the docstring must be one line"
            last = tree.body[-1]
            displays = isinstance(last, ast.Expr) and not (
                isinstance(last.value, ast.Call) and getattr(last.value.func, "id", "") == "print")
            assert not displays, f"{name} {gid}: ends in an expression nbgrader would display"
            visible = _visible_part(cell.source)
            prints = [n for n in ast.walk(ast.parse(visible)) if isinstance(n, ast.Call)
                      and getattr(n.func, "id", "") == "print"]
            assert len(prints) == 1, f"{name} {gid}: the visible tests print one success line"
            assert "all tests passed" not in visible.lower(), f"{name} {gid}: hidden tests run later"


@pytest.mark.parametrize("name", NAMES)
def test_every_exercise_has_hints_and_collapsed_tests(name):
    nb = read(paths.student_path(name))
    current, hinted = None, {}
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if meta.get("solution") and cell.cell_type == "code":
            current = meta["grade_id"]
            hinted[current] = False
        elif "hints" in cell.metadata.get("tags", []) and current is not None:
            steps = cell.source.count("<details>")
            assert 2 <= steps <= 3, f"{name}: hints for {current} have {steps} steps"
            hinted[current] = True
    missing = [k for k, v in hinted.items() if not v]
    assert not missing, f"{name}: no hints cell after {missing}"
    helpers = [c for c in nb.cells if "test-helpers" in c.metadata.get("tags", [])]
    assert len(helpers) == 1, f"{name}: one test-helpers cell"
    for cell in _grade_cells(nb) + helpers:
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True \
            and cell.metadata.get("cellView") == "form", \
            f"{name} {nbgrader_meta(cell).get('grade_id')}: not collapsed in JupyterLab and Colab"


def test_release_is_in_sync():
    assert release.stale(NAMES) == [], "run `python -m grader release` and commit notebooks/"
    assert release.orphans() == []


@pytest.mark.parametrize("name", NAMES)
def test_student_copy_leaks_no_solution_or_hidden_test(name):
    student = paths.student_path(name).read_text()
    assert "BEGIN SOLUTION" not in student and "BEGIN HIDDEN TESTS" not in student
    for cell in read(paths.solution_path(name)).cells:
        for kind, body in BLOCK.findall(cell.source):
            for line in body.strip().splitlines():
                line = line.strip()
                # Distinctive lines only: short ones ("return x", "pass") may recur in prose.
                if len(line) >= 40 and not line.startswith("#"):
                    assert line not in student, f"{kind} text leaked into notebooks/{name}: {line!r}"


@pytest.mark.parametrize("name", NAMES)
def test_student_copy_raises_not_implemented_in_each_exercise(name):
    nb = read(paths.student_path(name))
    answers = [c for c in nb.cells if nbgrader_meta(c).get("solution") and c.cell_type == "code"]
    assert answers, f"{name} has no exercise"
    for cell in answers:
        assert "raise NotImplementedError()" in cell.source, nbgrader_meta(cell)["grade_id"]


# ---------------------------------------------------------------- execution and nbgrader (slow)

def run_notebook(path, timeout=600):
    from nbclient import NotebookClient
    nb = read(path)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def errors_in(nb):
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.output_type == "error":
                out.append(f"cell {i} ({nbgrader_meta(cell).get('grade_id')}): {o.ename}: {o.evalue}")
            elif o.output_type == "stream" and o.name == "stderr" and nbgrader_meta(cell).get("grade"):
                out.append(f"grade cell {nbgrader_meta(cell)['grade_id']} wrote to stderr: {o.text[:200]}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_solution_executes_headless_with_a_figure(name):
    nb = run_notebook(paths.solution_path(name))
    assert errors_in(nb) == []
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{name} draws no figure"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Autograde the solution and the untouched student copy of every notebook, once."""
    cache = {}

    def grade(name):
        if name not in cache:
            course = Course(tmp_path_factory.mktemp(f"course-{name}"))
            course.submit("solution", name, paths.solution_path(name))
            course.submit("untouched", name, paths.student_path(name))
            proc = course.autograde(name)
            assert proc.returncode == 0, proc.stderr[-3000:]
            cache[name] = course
        return cache[name]
    return grade


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_nbgrader_round_trip(name, graded):
    """Plain nbgrader (an instructor's own course): the solution gets full marks; the untouched
    student copy scores 0 and, run top to bottom, raises errors in grade cells only (a stuck
    student still sees every demonstration)."""
    course = graded(name)
    score, max_score = course.total(name, "solution")
    assert max_score > 0 and score == max_score, course.scores(name, "solution")
    assert errors_in(read(course.autograded_notebook("solution", name))) == []
    score, _ = course.total(name, "untouched")
    assert score == 0, course.scores(name, "untouched")
    untouched = read(course.autograded_notebook("untouched", name))
    outside = [e for c in untouched.cells if not nbgrader_meta(c).get("grade")
               for e in errors_in(nbformat.v4.new_notebook(cells=[c]))]
    assert not outside, f"{name}: errors outside grade cells in the untouched copy: {outside}"


def validate(notebooks, course_root, invert=False):
    args = ["validate", *map(str, notebooks)] + (["--invert"] if invert else [])
    # nbgrader validate exits 0 whatever it finds: its verdict is in the text.
    proc = Course(course_root).run(*args, timeout=1800)
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_nbgrader_validate_passes_on_every_source(tmp_path):
    out = validate([paths.solution_path(n) for n in NAMES], tmp_path)
    assert out.count("Success! Your notebook passes all the tests.") == len(NAMES), out[-4000:]


@pytest.mark.slow
def test_nbgrader_validate_invert_finds_no_passing_test_in_student_copies(tmp_path):
    out = validate([paths.student_path(n) for n in NAMES], tmp_path, invert=True)
    assert out.count("Success! The notebook does not pass any tests.") == len(NAMES), out[-4000:]
