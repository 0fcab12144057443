"""Shared test set-up: run nbgrader/jupyter from this venv and let notebooks find data/."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# nbgrader shells out to alembic and kernels are started from PATH: the venv's bin comes first.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("COURSE_DATA", str(ROOT / "data"))
# Notebooks pick their FAST mode without a GPU anyway; tests must never depend on one.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
