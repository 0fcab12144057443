"""`python -m grader check NOTEBOOK`: the students' self-check."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader import paths, selfcheck

ROOT = Path(__file__).resolve().parent.parent
A = "01_gate_equations"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "grader", "check", *args], cwd=ROOT,
                          capture_output=True, text=True)


@pytest.mark.parametrize("content, message", [
    (None, "no such notebook"),
    (b"", "is empty"),
    (b"{oops", "not valid JSON"),
    (b'{"cells": 3}', "not a valid notebook"),
])
def test_clear_messages_for_bad_files(tmp_path, content, message):
    path = tmp_path / "mine.ipynb"
    if content is not None:
        path.write_bytes(content)
    proc = _cli(str(path))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_name_and_no_tests(tmp_path):
    proc = _cli("99")
    assert proc.returncode == 2 and "No notebook called" in proc.stderr
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), plain)
    proc = _cli(str(plain))
    assert proc.returncode == 2 and "no graded test cells" in proc.stderr


def test_exercises_follow_the_answer_cells():
    for name in paths.assignments():
        nb = nbformat.read(paths.solution_path(name), as_version=4)
        found = selfcheck.exercises(nb)
        points = sum(float(c.metadata.get("nbgrader", {}).get("points", 0)) for c in nb.cells
                     if c.metadata.get("nbgrader", {}).get("grade"))
        assert found and sum(p for _, _, p in found) == points, name
        answers = {c.metadata["nbgrader"]["grade_id"] for c in nb.cells
                   if c.metadata.get("nbgrader", {}).get("solution")}
        assert all(ex in answers or ex.startswith("test") for _, ex, _ in found), name


@pytest.mark.slow
def test_check_scores_solution_full_and_student_copy_zero(tmp_path):
    proc = _cli(str(paths.solution_path(A)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nb = nbformat.read(paths.solution_path(A), as_version=4)
    total = sum(p for _, _, p in selfcheck.exercises(nb))
    assert f"Total: {total:g}/{total:g}" in proc.stdout
    assert proc.stdout.count("PASS") == len(selfcheck.exercises(nb))
    # The student copy, by number: every exercise fails with NotImplementedError; exit status 1.
    proc = _cli(A[:2])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"Total: 0/{total:g}" in proc.stdout and "NotImplementedError" in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr


@pytest.mark.slow
def test_check_scores_like_nbgrader_and_hidden_shows_messages_only(tmp_path):
    """A test cell whose student code writes to stderr fails with that reason (nbgrader scores it
    0); --hidden runs the hidden tests and prints their messages, never their code."""
    nb = nbformat.read(paths.solution_path(A), as_version=4)
    first = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
    name = next(n for n in selfcheck_functions(first.source))
    first.source += (f"\n_orig_{name} = {name}\n"
                     f"def {name}(*a, **k):\n    import sys\n    print('careful!', file=sys.stderr)\n"
                     f"    return _orig_{name}(*a, **k)\n")
    path = tmp_path / f"{A}.ipynb"
    nbformat.write(nb, path)
    proc = _cli(str(path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "wrote to stderr" in proc.stdout and "careful!" in proc.stdout
    proc = _cli(str(paths.solution_path(A)), "--hidden")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hidden = [line.strip() for c in nb.cells for line in
              c.source.split("### BEGIN HIDDEN TESTS")[-1].split("### END HIDDEN TESTS")[0].splitlines()
              if "### BEGIN HIDDEN TESTS" in c.source and len(line.strip()) > 30]
    assert hidden and not any(line in proc.stdout for line in hidden)
    assert "visible and hidden" in proc.stdout


def selfcheck_functions(source):
    import ast
    return [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)]
