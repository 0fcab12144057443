"""Generate the student notebooks (notebooks/) from the solutions (solutions/) with nbgrader.

Each solutions notebook is its own nbgrader assignment. nbgrader's generate_assignment strips
solutions and hidden tests and clears outputs; this step then stamps the "Open in Colab" badge
(built from course.toml, the one place the repository address lives), fills the cells tagged
`gpu-figures` from measurements/gpu.json (grader.gpu_figures) and writes notebooks/.
"""
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from . import gpu_figures, paths

BADGE_TAG = "colab-badge"


def colab_url(name):
    repo, branch = paths.repository()
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{name}.ipynb"


def badge_cell(name):
    cell = nbformat.v4.new_markdown_cell(
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})",
        metadata={"tags": [BADGE_TAG]},
    )
    cell.id = "colab-badge"
    return cell


def generate_one(name, course_root):
    """Run nbgrader generate_assignment for one assignment in a throw-away course; return it."""
    from .course_dir import Course
    course = Course(course_root)
    src = course.root / "source" / name
    src.mkdir(parents=True)
    shutil.copy(paths.solution_path(name), src / f"{name}.ipynb")
    proc = course.run("generate_assignment", name, "--force", "--no-db")
    out = course.root / "release" / name / f"{name}.ipynb"
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"nbgrader generate_assignment failed for {name}:\n{proc.stdout}\n{proc.stderr}")
    return nbformat.read(out, as_version=4)


def finish(name, nb):
    """Stamp the badge and the GPU figures; normalise: no outputs, no execution counts, stable metadata."""
    nb.cells = [c for c in nb.cells if BADGE_TAG not in c.metadata.get("tags", [])]
    nb.cells.insert(0, badge_cell(name))
    gpu_figures.stamp(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return nb


def render(nb):
    return nbformat.writes(nb) + "\n"


def build(names):
    """{name: text of the student notebook} for each assignment, built in a throw-away course."""
    with tempfile.TemporaryDirectory(prefix="course-release-") as tmp:
        def job(name):
            course = Path(tmp) / name
            course.mkdir()
            return name, render(finish(name, generate_one(name, course)))
        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(pool.map(job, names))


def stale(names):
    """Names whose committed student notebook differs from what release would write."""
    built = build(names)
    out = []
    for name, text in built.items():
        target = paths.student_path(name)
        if not target.exists() or target.read_text() != text:
            out.append(name)
    return out


def orphans():
    """Student notebooks with no solutions notebook behind them."""
    known = set(paths.assignments())
    return sorted(p.stem for p in paths.NOTEBOOKS.glob("*.ipynb") if p.stem not in known)


def main(args):
    names = [paths.resolve_assignment(a) for a in args.notebooks] or paths.assignments()
    if args.check:
        bad = stale(names) + ([] if args.notebooks else orphans())
        for name in bad:
            print(f"STALE: notebooks/{name}.ipynb is not what solutions/{name}.ipynb generates")
        if bad:
            print("Run `python -m grader release` and commit notebooks/.")
            return 1
        print(f"notebooks/ is in sync with solutions/ ({len(names)} notebooks).")
        return 0
    paths.NOTEBOOKS.mkdir(exist_ok=True)
    for name, text in build(names).items():
        paths.student_path(name).write_text(text)
        print(f"wrote notebooks/{name}.ipynb")
    if not args.notebooks:
        for name in orphans():
            paths.student_path(name).unlink()
            print(f"removed notebooks/{name}.ipynb (no solutions notebook)")
    return 0


def add_arguments(parser):
    parser.add_argument("notebooks", nargs="*", help="only these (e.g. 01 or 01_gate_equations)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each stale notebook")

