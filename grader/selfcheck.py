"""python -m grader check NOTEBOOK: run a notebook and print each exercise's tests, pass/fail, points.

For students: no nbgrader database, no course folder. NOTEBOOK is a path, or a notebook's number
or name ("01", "01_gate_equations": the copy in notebooks/). The notebook runs top to bottom in a
fresh kernel (your file is not modified); a test cell passes when it raises nothing. In a
student's copy these are the visible tests; the instructor's grading adds hidden ones.
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
    import nbformat
    data = path.read_bytes()
    if not data.strip():
        raise CheckError(f"{path} is empty (0 bytes): restore it from git or re-download it")
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckError(f"{path} is not a notebook (not valid JSON: {exc})") from None
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 - nbformat raises several kinds
        raise CheckError(f"{path} is not a valid notebook: {str(exc).splitlines()[0]}") from None
    return nb


def exercises(nb):
    """[(cell index, exercise name, points)] for every grade cell, in order."""
    out, last_solution = [], None
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and not meta.get("grade"):
            last_solution = meta.get("grade_id")
        if meta.get("grade") and cell.cell_type == "code":
            gid = meta.get("grade_id", f"cell {i}")
            name = last_solution or gid
            out.append((i, name, float(meta.get("points", 0) or 0)))
    return out


def failure(cell):
    """The error a test cell raised, in one line, or None when it passed."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            if out.get("ename") == "CellTimeoutError":
                return "timed out (an endless loop?)"
            evalue = (out.get("evalue") or "").strip().splitlines()
            return f"{out.get('ename')}: {evalue[0] if evalue else ''}".strip().rstrip(":")
    return None


def run(nb, cwd, timeout):
    from nbclient import NotebookClient
    client = NotebookClient(nb, timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
                            kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    import subprocess
    # The kernel's own log (e.g. ipykernel's transport notice) is not the student's business;
    # cell output, errors included, comes back through the notebook protocol.
    client.execute(stderr=subprocess.DEVNULL)
    return nb


def check(path, timeout=300, out=sys.stdout):
    """Run the notebook at `path`; print the report; return (score, max_score, rows)."""
    nb = read_notebook(path)
    tests = exercises(nb)
    if not tests:
        raise CheckError(f"{path} has no graded test cells (is it one of the course's notebooks?)")
    print(f"Running {path} ({len(tests)} graded test cells) ...", file=out, flush=True)
    start = time.perf_counter()
    try:
        run(nb, path.resolve().parent, timeout)
    except Exception as exc:  # noqa: BLE001 - e.g. the kernel died
        raise CheckError(f"the notebook could not run to the end: {type(exc).__name__}: {exc}") from None
    rows, score, total = [], 0.0, 0.0
    width = max(len(name) for _, name, _ in tests)
    for index, name, points in tests:
        why = failure(nb.cells[index])
        got = 0.0 if why else points
        score += got
        total += points
        rows.append((name, why is None, got, points, why))
        mark = "PASS" if why is None else "FAIL"
        line = f"  {mark}  {name:<{width}}  {got:g}/{points:g}"
        if why:
            line += f"   {why[:160]}"
        print(line, file=out)
    print(f"Total: {score:g}/{total:g}  ({time.perf_counter() - start:.0f} s)", file=out)
    if score < total:
        print("A failing line names what is wrong; NotImplementedError means the exercise is not "
              "done yet. Hidden tests run only when your instructor grades.", file=out)
    return score, total, rows


def main(args):
    try:
        path = find_notebook(args.notebook)
        score, total, _ = check(path, timeout=args.timeout)
    except CheckError as exc:
        print(f"check: {exc}", file=sys.stderr)
        return 2
    return 0 if score == total else 1


def add_arguments(parser):
    parser.add_argument("notebook", help="a .ipynb path, or a notebook number/name (01, 01_gate_equations)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds one cell may run (default 300)")
