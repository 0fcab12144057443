"""Run a solutions notebook's definitions (setup cell + solution cells) in a fresh namespace.

Benchmarks and the project's own tests use this to reach the reference implementations without
executing a whole notebook (its demonstrations, figures and training runs). Plain json, no
nbformat: benchmarks also run on GPU machines that have torch and little else.
"""
import json

from . import paths


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell):
    return set(cell.get("metadata", {}).get("tags", []))


def is_setup_cell(cell):
    return cell["cell_type"] == "code" and "setup" in _tags(cell)


def is_solution_cell(cell):
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell["cell_type"] == "code" and meta.get("solution", False) and not meta.get("grade", False)


def load(name, extra_tags=()):
    """Namespace holding what the setup cell and every solution cell of `name` define.

    Cells tagged with any of `extra_tags` (e.g. "support") also run, in notebook order.
    """
    name = paths.resolve_assignment(name)
    with open(paths.solution_path(name), encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    ns = {"__name__": f"solution_{name}"}
    for cell in cells:
        if is_setup_cell(cell) or is_solution_cell(cell) or _tags(cell) & set(extra_tags):
            exec(compile(_source(cell), f"<{name} cell {cell.get('id', '?')}>", "exec"), ns)
    return ns
