"""Run a solutions notebook's definitions (setup cell + solution cells) in a fresh namespace.

Benchmarks and the project's own tests use this to reach the reference implementations without
executing a whole notebook (its demonstrations, figures and training runs).
"""
import nbformat

from . import paths


def is_setup_cell(cell):
    return cell.cell_type == "code" and "setup" in cell.metadata.get("tags", [])


def is_solution_cell(cell):
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and meta.get("solution", False) and not meta.get("grade", False)


def load(name, extra_tags=()):
    """Namespace holding what the setup cell and every solution cell of `name` define.

    Cells tagged with any of `extra_tags` (e.g. "support") also run, in notebook order.
    """
    nb = nbformat.read(paths.solution_path(paths.resolve_assignment(name)), as_version=4)
    ns = {"__name__": f"solution_{name}"}
    for cell in nb.cells:
        tags = set(cell.metadata.get("tags", []))
        if is_setup_cell(cell) or is_solution_cell(cell) or tags & set(extra_tags):
            exec(compile(cell.source, f"<{name} cell {cell.get('id', '?')}>", "exec"), ns)
    return ns
