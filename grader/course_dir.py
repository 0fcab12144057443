"""A throw-away nbgrader course directory: generate from solutions/, submit, autograde, score.

nbgrader keeps one course per folder and one SQLite gradebook per course and cannot autograde in
parallel; callers that want parallelism give each worker its own Course.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from . import paths


class NbgraderError(RuntimeError):
    pass


class Course:
    def __init__(self, root, timeout=None, extra_config=(), config=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.extra_config = list(extra_config)
        self.config = Path(config) if config else paths.NBGRADER_CONFIG
        # nbgrader's apps ignore --config; they read nbgrader_config.py from the working directory
        # (the course root). Point that file at ours.
        (self.root / "nbgrader_config.py").write_text(
            f"load_subconfig({str(self.config)!r})  # noqa: F821\n")
        self.generated = set()

    def run(self, *args, env=None, timeout=None):
        """Run `nbgrader ARGS` in this course. With `timeout` (seconds of wall clock) the whole
        process group (nbgrader and its kernel) is killed when it runs over, and
        subprocess.TimeoutExpired is raised."""
        cmd = [sys.executable, "-m", "nbgrader", *args,
               f"--CourseDirectory.root={self.root}", "--Application.log_level=INFO",
               *self.extra_config]
        if self.timeout is not None:
            cmd.append(f"--Execute.timeout={int(self.timeout)}")
        proc = subprocess.Popen(cmd, cwd=self.root, env=env or paths.tool_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            # A kernel that outlived nbgrader (or was orphaned) goes with its process group.
            _kill_group(proc, only_children=True)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def generate(self, name):
        """Copy solutions/<name>.ipynb in as the source and run generate_assignment (with db)."""
        if name in self.generated:
            return
        src = self.root / "source" / name
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths.solution_path(name), src / f"{name}.ipynb")
        proc = self.run("generate_assignment", name, "--force", "--create")
        if proc.returncode != 0:
            raise NbgraderError(f"generate_assignment {name} failed:\n{proc.stderr[-3000:]}")
        self.generated.add(name)

    def submission_dir(self, student, name):
        return self.root / "submitted" / student / name

    def submit(self, student, name, notebook_path=None, text=None):
        """Place a student's notebook (a file, or its text) where autograde looks for it."""
        dest = self.submission_dir(student, name)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"{name}.ipynb"
        if text is not None:
            target.write_text(text)
        else:
            shutil.copy(notebook_path, target)
        return target

    def autograde(self, name, student=None, env=None, timeout=None):
        self.generate(name)
        args = ["autograde", name, "--force", "--create"]
        if student:
            args.append(f"--student={student}")
        return self.run(*args, env=env, timeout=timeout)

    def autograded_notebook(self, student, name):
        return self.root / "autograded" / student / name / f"{name}.ipynb"

    def scores(self, name, student):
        """{grade_id: (score, max_score)} for one student's autograded notebook, from the gradebook."""
        from nbgrader.api import Gradebook
        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}") as gb:
            nb = gb.find_submission_notebook(name, name, student)
            return {g.name: (g.score, g.max_score) for g in nb.grades}

    def feedback_html(self, student, name):
        return self.root / "feedback" / student / name / f"{name}.html"

    def total(self, name, student):
        s = self.scores(name, student)
        return sum(v[0] for v in s.values()), sum(v[1] for v in s.values())


def _kill_group(proc, only_children=False):
    """SIGKILL the process group that `proc` leads (it was started with start_new_session)."""
    if only_children and proc.poll() is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
