"""Helpers for writing and editing solutions notebooks with correct nbgrader metadata.

solutions/*.ipynb are the source of truth; these helpers only save typing when a notebook is
written or edited from a script:

    from grader.authoring import md, setup, helpers, code, solution, hints, tests, scratch, write
    write("06_hand_written_bilstm", [md("# Title ..."), setup("import torch ..."), ...])
"""
import re

import nbformat

from . import paths

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "cell"


def _meta(grade_id, *, solution=False, grade=False, locked=False, points=None, task=False):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": task}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def md(text, grade_id=None):
    """A read-only markdown cell."""
    cell = nbformat.v4.new_markdown_cell(text.strip("\n"))
    cell.metadata.update(_meta(grade_id or f"md-{_slug(text)}", locked=True))
    return cell


def setup(source):
    """The notebook's setup cell (imports, seeds, device, data path). Tagged 'setup' so the
    project's tests and benchmarks can run it; plain Python only (no %magics)."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    cell.metadata.update(_meta("setup", locked=True))
    cell.metadata["tags"] = ["setup"]
    return cell


# Input collapsed by default: JupyterLab reads jupyter.source_hidden, Colab reads cellView.
COLLAPSED = {"jupyter": {"source_hidden": True}, "cellView": "form"}


def helpers(source):
    """The notebook's test-helpers cell: the _underscored helpers its grade cells share. Locked,
    collapsed, tagged 'test-helpers'; the grader's judge runs it before the grade cells."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    cell.metadata.update(_meta("test-helpers", locked=True))
    cell.metadata.update(COLLAPSED)
    cell.metadata["tags"] = ["test-helpers"]
    return cell


def hints(*steps, grade_id=None):
    """A hints cell: each step (title, text) becomes a collapsible <details> block."""
    blocks = [f"<details><summary>Hint {k}: {title}</summary>\n\n{text.strip()}\n</details>"
              for k, (title, text) in enumerate(steps, 1)]
    cell = md("\n\n".join(blocks), grade_id=grade_id or f"hints-{_slug(steps[0][0])}")
    cell.metadata["tags"] = ["hints"]
    return cell


def code(source, grade_id=None, tags=()):
    """A read-only code cell: a demonstration, a figure, a helper."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    cell.metadata.update(_meta(grade_id or f"code-{_slug(source)}", locked=True))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def solution(source, grade_id):
    """An answer cell: the code between ### BEGIN SOLUTION / ### END SOLUTION is replaced by
    `raise NotImplementedError()` in the student copy."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    cell.metadata.update(_meta(grade_id, solution=True))
    return cell


def tests(source, grade_id, points):
    """A grade cell: visible tests, then ### BEGIN HIDDEN TESTS ... ### END HIDDEN TESTS."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    cell.metadata.update(_meta(grade_id, grade=True, locked=True, points=points))
    cell.metadata.update(COLLAPSED)
    return cell


def scratch(source="", cell_id=None):
    """A cell for the student's own experiments: no nbgrader metadata at all (an unlocked cell
    that nbgrader does not know would make autograde fail with a KeyError)."""
    cell = nbformat.v4.new_code_cell(source.strip("\n"))
    if cell_id:
        cell.id = cell_id
    return cell


def write(name, cells):
    """Write solutions/<name>.ipynb with stripped outputs and unique cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": KERNELSPEC,
                   "language_info": {"name": "python", "version": "3.11"}}
    seen = set()
    for k, cell in enumerate(cells):
        if "nbgrader" not in cell.metadata:           # a scratch cell
            base = cell.get("id") or f"scratch-{k}"
        else:
            base = cell.metadata["nbgrader"]["grade_id"]
        gid, n = base, 1
        while gid in seen:
            n += 1
            gid = f"{base}-{n}"
        seen.add(gid)
        if "nbgrader" in cell.metadata:
            cell.metadata["nbgrader"]["grade_id"] = gid
        cell.id = gid[:64]
    nb.cells = cells
    nbformat.validate(nb)
    path = paths.solution_path(name)
    path.parent.mkdir(exist_ok=True)
    path.write_text(nbformat.writes(nb) + "\n")
    return path
