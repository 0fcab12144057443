"""python -m grader check NOTEBOOK [--hidden]: grade your own notebook as the grader would.

For students: no nbgrader database, no course folder. NOTEBOOK is a path, or a notebook's number
or name ("01", "01_gate_equations": the copy in notebooks/). Your file is not modified.

It runs the way `grader grade` runs (grader/judged_execute.py): your notebook top to bottom in a
fresh kernel, the tests in a separate process, and each grade cell scored exactly as nbgrader
scores it (an error or a line on stderr: 0 points; the course's IgnorePattern applies). The tests
are the course's own copy of each grade cell, whatever your notebook holds there (a deleted or
edited test cell is put back, as nbgrader does).

Without --hidden it runs the visible tests (the released student notebook's). With --hidden, in
a clone of the course, it also runs the hidden tests from solutions/ and prints, for each grade
cell, pass or fail and the failing check's message, never the test code.
"""
import json
import sys
import time
from pathlib import Path

from . import paths


class CheckError(Exception):
    """A clear, user-facing problem with the notebook."""


def find_notebook(text):
    path = Path(text)
    if path.suffix == ".ipynb" or path.exists() or "/" in text:
        if not path.exists():
            raise CheckError(f"no such notebook: {path}")
        if path.is_dir():
            raise CheckError(f"{path} is a folder; give a .ipynb file")
        return path
    try:
        name = paths.resolve_assignment(text)
    except SystemExit as exc:
        raise CheckError(str(exc)) from None
    path = paths.student_path(name)
    if not path.exists():
        raise CheckError(f"{path} does not exist (run `python -m grader release {name[:2]}`)")
    return path


def read_notebook(path):
    from .submissions import read_notebook as read
    data = path.read_bytes()
    if not data.strip():
        raise CheckError(f"{path} is empty (0 bytes): restore it from git or re-download it")
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckError(f"{path} is not a notebook (not valid JSON: {str(exc)[:200]})") from None
    nb, why = read(path)
    if nb is None:
        raise CheckError(f"{path} is not a valid notebook: {why}")
    return nb


def _ids(nb):
    return {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}


def which_assignment(path, nb):
    """The course notebook this file is (by its name, else by its nbgrader cell ids)."""
    names = paths.assignments()
    stem = path.stem
    for name in names:
        if stem == name or stem.startswith(name):
            return name
    ids = _ids(nb)
    best = max(names, key=lambda n: len(ids & _ids(_read_source(n, hidden=True))), default=None)
    if best and ids & _ids(_read_source(best, hidden=True)):
        return best
    return None


def _read_source(name, hidden):
    import nbformat
    path = paths.solution_path(name) if hidden else paths.student_path(name)
    if not path.exists():
        if hidden:
            raise CheckError("--hidden needs the course's solutions/ folder (a clone of the "
                             "repository)")
        path = paths.solution_path(name)
    return nbformat.read(path, as_version=4)


def exercises(nb):
    """[(cell index, exercise name, points)] for every grade cell, in order."""
    out, last_solution = [], None
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and not meta.get("grade"):
            last_solution = meta.get("grade_id")
        if meta.get("grade") and cell.cell_type == "code":
            gid = meta.get("grade_id", f"cell {i}")
            out.append((i, last_solution or gid, float(meta.get("points", 0) or 0)))
    return out


def restore_grade_cells(nb, source):
    """Every grade cell of `source` in `nb` (edited ones replaced, deleted ones put back after the
    nearest earlier cell of the source that is still there)."""
    import copy
    from .judged_execute import grade_id, is_grade
    order = [grade_id(c) for c in source.cells if grade_id(c)]
    by_id = {grade_id(c): c for c in source.cells if grade_id(c)}
    cells = [c for c in nb.cells]
    for i, c in enumerate(cells):
        gid = grade_id(c)
        if gid in by_id and is_grade(by_id[gid]):
            cells[i] = copy.deepcopy(by_id[gid])
    for pos, gid in enumerate(order):
        if not is_grade(by_id[gid]) or any(grade_id(c) == gid for c in cells):
            continue
        where = 0
        for earlier in reversed(order[:pos]):
            hits = [i for i, c in enumerate(cells) if grade_id(c) == earlier]
            if hits:
                where = hits[0] + 1
                break
        cells.insert(where, copy.deepcopy(by_id[gid]))
    nb.cells = cells
    return nb


def _ignore_pattern():
    from traitlets.config.loader import PyFileConfigLoader
    from nbgrader.preprocessors import IgnorePattern
    config = PyFileConfigLoader(paths.NBGRADER_CONFIG.name,
                                path=str(paths.NBGRADER_CONFIG.parent)).load_config()
    return IgnorePattern(config=config)


def first_line(source):
    import ast
    try:
        doc = ast.get_docstring(ast.parse(source))
    except SyntaxError:
        doc = None
    return (doc or "").strip().splitlines()[0] if doc else ""


def run(nb, cwd, timeout, source_path):
    from .judged_execute import JudgedExecute
    ep = JudgedExecute(timeout=timeout, source_notebook=str(source_path), kernel_name="python3")
    ep.preprocess(nb, {"metadata": {"path": str(cwd)}})
    return nb


def check(path, timeout=300, hidden=False, out=sys.stdout):
    """Run the notebook at `path`; print the report; return (score, max_score, rows)."""
    from nbgrader.utils import determine_grade
    nb = read_notebook(path)
    name = which_assignment(path, nb)
    if name is None:
        raise CheckError(f"{path} has no graded test cells of this course (is it one of the "
                         f"course's notebooks?)")
    source = _read_source(name, hidden)
    source_path = paths.solution_path(name) if hidden else (
        paths.student_path(name) if paths.student_path(name).exists() else paths.solution_path(name))
    nb = restore_grade_cells(nb, source)
    tests = exercises(nb)
    print(f"Running {path} ({len(tests)} graded test cells, "
          f"{'visible and hidden' if hidden else 'visible'} tests) ...", file=out, flush=True)
    start = time.perf_counter()
    try:
        run(nb, path.resolve().parent, timeout, source_path)
    except Exception as exc:  # noqa: BLE001 - e.g. the kernel could not start
        raise CheckError(f"the notebook could not run to the end: {type(exc).__name__}: {exc}") from None
    ignore = _ignore_pattern()
    rows, score, total = [], 0.0, 0.0
    width = max((len(n) for _, n, _ in tests), default=10)
    for index, ex, points in tests:
        cell = nb.cells[index]
        ignore.preprocess_cell(cell, {}, index)
        got, _ = determine_grade(cell)
        got = float(got or 0)
        why = failure(cell)
        score += got
        total += points
        rows.append((ex, got == points, got, points, why))
        mark = "PASS" if got == points else "FAIL"
        what = first_line(cell.source)
        line = f"  {mark}  {ex:<{width}}  {got:g}/{points:g}  {what[:90]}"
        if why and got < points:
            line += f"\n        {why[:300]}"
        print(line, file=out)
    print(f"Total: {score:g}/{total:g}  ({time.perf_counter() - start:.0f} s)", file=out)
    if score < total:
        print("A failing line names what is wrong; NotImplementedError means the exercise is not "
              "done yet." + ("" if hidden else " Hidden tests run only with --hidden (in a clone) "
                             "or when your instructor grades."), file=out)
    return score, total, rows


def failure(cell):
    """Why a test cell lost its points, in one line, or None."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            if out.get("ename") == "CellTimeoutError":
                return "timed out (an endless loop?)"
            evalue = (out.get("evalue") or "").strip().splitlines()
            return f"{out.get('ename')}: {evalue[0] if evalue else ''}".strip().rstrip(":")
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            return ("wrote to stderr (nbgrader scores a test cell 0 for that): "
                    + out.get("text", "").strip().splitlines()[0][:200] if out.get("text", "").strip()
                    else "wrote to stderr")
    return None


def main(args):
    try:
        path = find_notebook(args.notebook)
        score, total, _ = check(path, timeout=args.timeout, hidden=args.hidden)
    except CheckError as exc:
        print(f"check: {exc}", file=sys.stderr)
        return 2
    return 0 if score == total else 1


def add_arguments(parser):
    parser.add_argument("notebook", help="a .ipynb path, or a notebook number/name (01, 01_gate_equations)")
    parser.add_argument("--hidden", action="store_true",
                        help="also run the hidden tests from solutions/ (messages only, never code)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds one cell may run (default 300)")
