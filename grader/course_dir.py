"""A throw-away nbgrader course directory: generate from solutions/, submit, autograde, score.

nbgrader keeps one course per folder and one SQLite gradebook per course and cannot autograde in
parallel; callers that want parallelism give each worker its own Course.
"""
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
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

    def _command(self, args):
        cmd = [sys.executable, "-m", "nbgrader", *args,
               f"--CourseDirectory.root={self.root}", "--Application.log_level=INFO",
               *self.extra_config]
        if self.timeout is not None:
            cmd.append(f"--Execute.timeout={int(self.timeout)}")
        return cmd

    def run(self, *args, env=None, timeout=None, watch=None):
        """Run `nbgrader ARGS` in this course; keep the last OUTPUT_LINES lines of its stdout and
        stderr (a kernel inherits them and could print without end). With `timeout` (seconds of
        wall clock), or a `watch` that sees each stderr line and says when the run is overdue,
        the whole process group (nbgrader and its kernel) is killed and
        subprocess.TimeoutExpired is raised."""
        cmd = self._command(args)
        watch = watch or _Deadline(timeout)
        proc = subprocess.Popen(cmd, cwd=self.root, env=env or paths.tool_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        out, err = (collections.deque(maxlen=OUTPUT_LINES) for _ in range(2))

        def read(stream, lines, each=None):
            # Bounded whatever is printed: a line longer than LINE_CHARS is cut, never held whole.
            partial = b""
            while True:
                chunk = stream.read1(1 << 16)
                if not chunk:
                    break
                parts = (partial + chunk).split(b"\n")
                partial = parts.pop()[-LINE_CHARS:]
                for raw in parts:
                    line = raw[:LINE_CHARS].decode("utf-8", "replace")
                    lines.append(line + "\n")
                    if each:
                        each(line)
            if partial:
                lines.append(partial.decode("utf-8", "replace"))

        readers = [threading.Thread(target=read, args=(proc.stdout, out), daemon=True),
                   threading.Thread(target=read, args=(proc.stderr, err, watch.line), daemon=True)]
        for t in readers:
            t.start()
        overdue = False
        try:
            while proc.poll() is None:
                if watch.overdue():
                    overdue = True
                    _kill_group(proc)
                try:
                    proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            # A kernel that outlived nbgrader (or was orphaned) goes with its process group.
            _kill_group(proc, only_children=True)
        for t in readers:
            t.join(timeout=10)
        if overdue:
            raise subprocess.TimeoutExpired(cmd, timeout, "".join(out), "".join(err))
        return subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), "".join(err))

    def generate(self, name):
        """Copy solutions/<name>.ipynb in as the source and run generate_assignment (with db)."""
        if name in self.generated:
            return
        self._place_source(name)
        proc = self.run("generate_assignment", name, "--force", "--create")
        if proc.returncode != 0:
            raise NbgraderError(f"generate_assignment {name} failed:\n{proc.stderr[-3000:]}")
        self.generated.add(name)

    def _place_source(self, name):
        src = self.root / "source" / name
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths.solution_path(name), src / f"{name}.ipynb")

    def generate_all(self, names):
        """generate_assignment (with db) for several assignments in one nbgrader process (each
        start costs seconds); if that fails, one at a time, so the error names the notebook."""
        todo = [n for n in names if n not in self.generated]
        if len(todo) > 1:
            for name in todo:
                self._place_source(name)
            if self.run("generate_assignment", "*", "--force", "--create").returncode == 0:
                self.generated.update(todo)
        for name in todo:
            self.generate(name)

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

    def autograde_submitted(self, student, env=None, wall=None):
        """One `nbgrader autograde` for every notebook submitted by `student` (in name order).

        nbgrader's start-up costs seconds, so this is much cheaper than one run per notebook.
        `wall` bounds each notebook separately (see _NotebookDeadlines). Returns
        (CompletedProcess, name of the notebook that ran over or None). Which notebooks were
        graded: see `autograde_complete`."""
        names = sorted(p.name for p in (self.root / "submitted" / student).iterdir() if p.is_dir())
        watch = _NotebookDeadlines({self.autograded_notebook(student, n): n for n in names}, wall)
        try:
            proc = self.run("autograde", "*", f"--student={student}", "--force", "--create",
                            env=env, watch=watch)
        except subprocess.TimeoutExpired as exc:
            proc = subprocess.CompletedProcess(exc.cmd, -9, exc.output, exc.stderr)
        return proc, watch.overran

    def autograde_complete(self, name, student):
        """True when every autograded test of `name` has its score in the gradebook (nbgrader
        writes them after running the whole notebook; a killed run leaves them empty, which the
        gradebook would otherwise count as 0)."""
        from nbgrader.api import Gradebook, MissingEntry
        if not self.autograded_notebook(student, name).exists():
            return False
        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}") as gb:
            try:
                nb = gb.find_submission_notebook(name, name, student)
            except MissingEntry:
                return False
            return all(g.auto_score is not None for g in nb.grades
                       if getattr(g.cell, "cell_type", "code") == "code")

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


OUTPUT_LINES = 2000
LINE_CHARS = 2000


class _Deadline:
    """A wall-clock limit on a whole run (none: None)."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds if seconds else None

    def line(self, text):
        pass

    def overdue(self):
        return self.end is not None and time.monotonic() > self.end


class _NotebookDeadlines:
    """A wall-clock limit on each notebook of an `autograde` run. nbgrader logs "Autograding
    PATH" when it starts executing one; the time from that line on counts against it, and
    start-up and sanitizing against the whole run (one `wall` per notebook, plus one)."""

    LINE = re.compile(r"^\[AutogradeApp \| INFO\] Autograding (.+\.ipynb)$")

    def __init__(self, notebooks, wall):
        self.names = {os.path.realpath(path): name for path, name in notebooks.items()}
        self.wall = wall
        self.started = self.since = time.monotonic()
        self.current = self.overran = None
        self.seen = set()

    def line(self, text):
        m = self.LINE.match(text)
        name = self.names.get(os.path.realpath(m.group(1))) if m else None
        # Once per notebook: student code shares the stream and could print a look-alike.
        if name and name not in self.seen:
            self.seen.add(name)
            self.current, self.since = name, time.monotonic()

    def overdue(self):
        if not self.wall:
            return False
        now = time.monotonic()
        if (now - self.since > self.wall
                or now - self.started > self.wall * (len(self.names) + 1)):
            self.overran = self.current or min(self.names.values(), default=None)
            return True
        return False


def _kill_group(proc, only_children=False):
    """SIGKILL the process group that `proc` leads (it was started with start_new_session)."""
    if only_children and proc.poll() is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
