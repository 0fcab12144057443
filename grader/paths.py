"""Where things live in the repository."""
import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
NOTEBOOKS = ROOT / "notebooks"
DATA = ROOT / "data"
NBGRADER_CONFIG = Path(__file__).resolve().parent / "nbgrader_config.py"
COURSE_TOML = ROOT / "course.toml"


def assignments():
    """Assignment names, one per solutions notebook, in course order (e.g. '01_gate_equations')."""
    return sorted(p.stem for p in SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def solution_path(name):
    return SOLUTIONS / f"{name}.ipynb"


def student_path(name):
    return NOTEBOOKS / f"{name}.ipynb"


def resolve_assignment(text):
    """Accept '01', '01_gate_equations' or a path to either notebook; return the assignment name."""
    stem = Path(text).stem
    names = assignments()
    if stem in names:
        return stem
    matches = [n for n in names if n.startswith(stem + "_")]
    if len(matches) == 1:
        return matches[0]
    raise SystemExit(f"No notebook called {text!r}. Known: {', '.join(names)}")


def repository():
    """(owner/name, branch) of the course on GitHub: the one place it is configured."""
    with open(COURSE_TOML, "rb") as f:
        repo = tomllib.load(f)["repository"]
    return repo["github"], repo.get("branch", "main")


def tool_env():
    """Environment for running nbgrader/jupyter from the venv: its bin first on PATH
    (nbgrader shells out to alembic), and the repo's data/ for notebooks that need MNIST."""
    import sys
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("COURSE_DATA", str(DATA))
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env
