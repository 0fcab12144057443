"""python -m grader grade SUBMISSIONS --out DIR [--jobs N] [--timeout SECONDS]

Autograde a folder of student submissions with nbgrader itself and write DIR/grades.csv,
DIR/cells.csv and DIR/feedback/<student>/<notebook>.html. SUBMISSIONS is only ever read.

How submissions are found: grader/submissions.py (one folder per student, or Canvas-style flat
files; renamed notebooks by content; the newest of several files for one notebook).

How it grades: the assignments are generated once from solutions/ into a template course. Each
student is then graded by a worker process of their own (grader/worker.py) in a throw-away copy
of it. Inside, nbgrader runs each notebook in a sandboxed kernel (grader/kernel_launcher.py:
bubblewrap, another user id per grading slot, cgroup, no network, nothing of the machine but
Python and the course data) and runs its tests in the judge (grader/judge.py), a separate
process that decides every verdict and has never run student code. GRADING_SECURITY.md is the
threat model.

Statuses: graded; timeout (a cell ran past --timeout and was stopped, the rest was graded; or
the notebook ran past the wall-clock limit: 0); missing; unreadable (empty, not JSON, nested too
deeply, not a notebook); error (the grader could not grade it; the detail column says why).
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from . import kernel_launcher, paths, submissions
from .course_dir import Course, NbgraderError

GRADING_CONFIG = Path(__file__).resolve().parent / "grading_config.py"
LAUNCHER = Path(__file__).resolve().parent / "kernel_launcher.py"
CSV_COLUMNS = ["student", "assignment", "score", "max_score", "status", "detail"]
CELL_COLUMNS = ["student", "assignment", "grade_id", "score", "max_score"]
# Processes and threads one sandbox may hold: torch's thread pools fit many times over; a fork
# bomb does not.
MAX_TASKS = 512
UID_BASE = int(os.environ.get("GRADER_UID_BASE", "64000"))   # two user ids per grading slot


class GradeError(SystemExit):
    """A user-facing failure: printed as a message, exit status 2."""

    def __init__(self, message):
        super().__init__(f"grade: {message}")


@dataclass
class Options:
    timeout: int
    wall: int
    memory_mb: int
    file_mb: int
    network: bool
    threads: int
    feedback_hidden: bool = False
    data: str = ""


# ---------------------------------------------------------------- the environment of a worker

def worker_env(opts, slot, cgroups):
    env = paths.tool_env()
    env.update(GRADER_MEMORY_MB=str(opts.memory_mb), GRADER_FILE_MB=str(opts.file_mb),
               GRADER_MAX_TASKS=str(MAX_TASKS), GRADER_NO_NETWORK="0" if opts.network else "1",
               GRADER_UID=str(UID_BASE + 2 * slot), GRADER_JUDGE_UID=str(UID_BASE + 2 * slot + 1),
               GRADER_CGROUP=json.dumps(cgroups), GRADER_SHOW=str(paths.ROOT / "grader"),
               GRADER_FEEDBACK_HIDDEN="1" if opts.feedback_hidden else "0",
               OMP_NUM_THREADS=str(opts.threads))
    if opts.data:
        env["COURSE_DATA"] = env["GRADER_DATA"] = opts.data
    env.pop("JUPYTER_CONFIG_DIR", None)
    return env


def prepare_data(dest):
    """Decompress the repository's MNIST files into dest/MNIST/raw, readable by every user, and
    return dest; None when the repository has no MNIST files (the notebook then downloads)."""
    import gzip
    src = paths.DATA / "MNIST" / "raw"
    gz = sorted(src.glob("*-ubyte.gz"))
    if len(gz) != 4:
        return None
    raw = Path(dest) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for d in (raw, raw.parent, Path(dest)):
        d.chmod(0o755)
    for f in gz:
        target = raw / f.name[:-3]
        with gzip.open(f, "rb") as zin, open(target, "wb") as out:
            shutil.copyfileobj(zin, out)
        target.chmod(0o644)
    return Path(dest)


def probe(opts, cgroups=None):
    """What the sandbox can do on this machine: {limit: description}."""
    env = worker_env(opts, 0, cgroups or {})
    proc = subprocess.run([sys.executable, str(LAUNCHER), "--probe"], env=env,
                          capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"sandbox": f"unavailable ({proc.stderr.strip()[-200:]})"}


def build_template(root, assignments):
    """A course with every assignment generated (gradebook included): {assignment: max score}."""
    course = Course(root, config=GRADING_CONFIG)
    try:
        course.generate_all(assignments)
    except NbgraderError as exc:
        raise GradeError(f"could not generate an assignment from solutions/ (is each a valid "
                         f"nbgrader source?)\n{exc}") from None
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        return {a: float(gb.find_assignment(a).max_score) for a in assignments}


# ---------------------------------------------------------------- one student

def grade_student(index, slot, student, work, assignments, max_scores, opts, cgroups,
                  source_ids):
    """Grade one student in a worker process: (rows, cells, feedback)."""
    folder = work / f"s{index:05d}"
    folder.mkdir()
    inbox = folder / "in"
    inbox.mkdir()
    rows = {}
    notebooks = {}
    for a in assignments:
        if a in student.problems:
            rows[a] = dict(zip(("status", "detail"), student.problems[a]), score=0.0)
            continue
        src = student.found[a]
        nb, why = submissions.read_notebook(src, source_ids[a])
        if nb is None:
            rows[a] = {"status": "unreadable", "detail": f"{src.name}: {why}", "score": 0.0}
            continue
        import nbformat
        path = inbox / f"{a}.ipynb"
        nbformat.write(nb, path)
        notebooks[a] = str(path)
    cells, feedback = [], {}
    if notebooks:
        result = _run_worker(folder, student, notebooks, max_scores, opts, slot, cgroups)
        if result is None and len(notebooks) > 1:
            # The worker itself failed: once more, one notebook at a time, so that only the
            # notebook that breaks the grader loses its marks.
            result = {"rows": [], "cells": [], "feedback": {}}
            for a, path in notebooks.items():
                one = _run_worker(folder, student, {a: path}, max_scores, opts, slot, cgroups,
                                  tag=a)
                if one:
                    for key in ("rows", "cells"):
                        result[key] += one[key]
                    result["feedback"].update(one["feedback"])
        if result is None:
            result = {"rows": [], "cells": [], "feedback": {}}
        got = {r["assignment"]: r for r in result["rows"] if r.get("assignment") in notebooks}
        for a in notebooks:
            r = got.get(a) or {"status": "error", "score": 0.0,
                               "detail": "the grader failed on this notebook"}
            rows[a] = {k: r[k] for k in ("status", "detail", "score")}
        cells = [c for c in result["cells"] if c.get("assignment") in notebooks]
        feedback = {a: h for a, h in result["feedback"].items() if a in notebooks}
    out = []
    for a in assignments:
        r = rows[a]
        detail = r["detail"]
        note = student.notes.get(a)
        if note and note not in detail:
            detail = f"{note}; {detail}" if detail else note
        out.append({"student": student.name, "assignment": a, "score": round(float(r["score"]), 4),
                    "max_score": max_scores[a], "status": r["status"], "detail": detail})
    return out, cells, feedback


def _run_worker(folder, student, notebooks, max_scores, opts, slot, cgroups, tag="all"):
    """Run grader.worker for these notebooks; its result, or None if it failed."""
    root = folder / f"course-{tag}"
    spec = {"student": student.name, "root": str(root), "template": str(folder.parent / "template"),
            "notebooks": notebooks, "max_scores": {a: max_scores[a] for a in notebooks},
            "timeout": opts.timeout, "wall": opts.wall}
    spec_path, result_path = folder / f"spec-{tag}.json", folder / f"result-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    limit = opts.wall * (len(notebooks) + 1) + 300
    env = worker_env(opts, slot, cgroups)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "grader.worker", str(spec_path),
                                 str(result_path)], cwd=paths.ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            pass
    finally:
        _kill_group(proc)
        shutil.rmtree(root, ignore_errors=True)
    try:
        data = submissions.read_bytes(result_path, limit=512 << 20)
        result = json.loads(data) if data else None
    except (ValueError, RecursionError):
        result = None
    if not isinstance(result, dict) or not all(isinstance(result.get(k), t) for k, t in
                                               (("rows", list), ("cells", list), ("feedback", dict))):
        return None
    return result


def _kill_group(proc):
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


# ---------------------------------------------------------------- writing results

def spreadsheet_safe(value):
    """A CSV cell a spreadsheet will not run as a formula (OWASP: prefix a quote)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r", "|", "%"):
        return "'" + value
    return value


def write_csv(path, rows, columns):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: spreadsheet_safe(v) for k, v in r.items()})


def pass_rates(cells):
    """{(assignment, grade_id): (passed, graded)} over all students."""
    rates = {}
    for c in cells:
        key = (c["assignment"], c["grade_id"])
        passed, total = rates.get(key, (0, 0))
        rates[key] = (passed + (float(c["score"]) >= float(c["max_score"]) > 0), total + 1)
    return rates


TIMING = {}  # seconds of the last grade() call: template_s (generate), students_s (grading)
DEFAULT_TIMEOUT = 300  # seconds per cell, as in nbgrader_config.py (notebook 07 trains there)


def grade(submissions_dir, out_dir, jobs=1, timeout=DEFAULT_TIMEOUT, wall=None, memory_mb=3072,
          file_mb=200, network=False, progress=True, keep=None, only=None,
          feedback_hidden=False):
    """Grade SUBMISSIONS into OUT_DIR; return the rows written to OUT_DIR/grades.csv.
    `only`: assignment names or numbers to grade (default: every notebook in solutions/)."""
    submissions_dir, out_dir = Path(submissions_dir).resolve(), Path(out_dir).resolve()
    assignments = paths.assignments()
    if only:
        try:
            assignments = [paths.resolve_assignment(a) for a in only]
        except SystemExit as exc:
            raise GradeError(str(exc)) from None
    if not assignments:
        raise GradeError(f"no notebooks in {paths.SOLUTIONS}")
    if out_dir == submissions_dir or submissions_dir in out_dir.parents:
        raise GradeError("--out must not be inside SUBMISSIONS (submissions are never modified)")
    import nbformat
    source_ids = {}
    for a in assignments:
        nb = nbformat.read(paths.solution_path(a), as_version=4)
        source_ids[a] = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}
    try:
        students, warnings = submissions.discover(submissions_dir, assignments, source_ids)
    except FileNotFoundError:
        raise GradeError(f"no such folder: {submissions_dir}") from None
    except NotADirectoryError:
        raise GradeError(f"{submissions_dir} is a file; give the folder that holds one folder "
                         f"(or file) per student") from None
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not students:
        raise GradeError(f"no student submissions in {submissions_dir} (expected one folder per "
                         f"student, or files named <student>_<notebook>.ipynb)")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, int(jobs))
    opts = Options(timeout=int(timeout), wall=int(wall or 4 * timeout + 120), memory_mb=memory_mb,
                   file_mb=file_mb, network=network,
                   threads=max(1, (os.cpu_count() or 1) // jobs), feedback_hidden=feedback_hidden)
    work_parent = Path(keep) if keep else None
    if work_parent:
        work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="course-grade-", dir=work_parent))
    os.chmod(work, 0o700)   # nothing in here is for the sandboxes, which see none of it
    cgroups = kernel_launcher.make_run_cgroups(f"grader-{os.getpid()}-{work.name[-8:]}") \
        if os.geteuid() == 0 else {}
    rows, cells = [], []
    try:
        data_dir = work / "data"
        data = prepare_data(data_dir)
        opts.data = str(data) if data else ""
        sandbox = probe(opts, cgroups)
        print("Student code runs with: " + "; ".join(f"{k} {v}" for k, v in sandbox.items()),
              file=sys.stderr)
        if sandbox.get("sandbox", "").startswith("none") and os.geteuid() == 0:
            print("warning: without bubblewrap the kernels are not isolated from each other or "
                  "from the machine's files (see GRADING_SECURITY.md)", file=sys.stderr)
        print(f"Generating {len(assignments)} assignment(s) from solutions/ ...", file=sys.stderr)
        started = time.perf_counter()
        max_scores = build_template(work / "template", assignments)
        TIMING["template_s"] = time.perf_counter() - started
        started = time.perf_counter()
        from tqdm import tqdm
        bar = tqdm(total=len(students), unit="student", desc="grading", disable=not progress,
                   file=sys.stderr)
        lock = threading.Lock()
        slots = list(range(jobs))
        results = {}

        def one(index, student):
            with lock:
                slot = slots.pop()
            try:
                return grade_student(index, slot, student, work, assignments, max_scores, opts,
                                     cgroups, source_ids)
            finally:
                with lock:
                    slots.append(slot)

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(one, i, s): s for i, s in enumerate(students)}
            for fut in as_completed(futures):
                student = futures[fut]
                try:
                    results[student.name] = fut.result()
                except Exception as exc:  # noqa: BLE001 - one student's failure never stops the batch
                    results[student.name] = ([
                        {"student": student.name, "assignment": a, "score": 0.0,
                         "max_score": max_scores[a], "status": "error",
                         "detail": f"grader failure: {type(exc).__name__}: {exc}"[:300]}
                        for a in assignments], [], {})
                with lock:
                    bar.update(1)
        bar.close()
        TIMING["students_s"] = time.perf_counter() - started
        for s in students:
            student_rows, student_cells, feedback = results[s.name]
            rows.extend(student_rows)
            cells.extend(dict(c, student=s.name) for c in student_cells)
            for a, html in feedback.items():
                dest = out_dir / "feedback" / s.folder / f"{a}.html"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(html)
        write_csv(out_dir / "grades.csv", rows, CSV_COLUMNS)
        write_csv(out_dir / "cells.csv", cells, CELL_COLUMNS)
    finally:
        kernel_launcher.remove_run_cgroups(cgroups)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return rows, cells


def summary(rows):
    by_status = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(by_status.items()))


def print_pass_rates(cells, out=sys.stdout):
    rates = pass_rates(cells)
    if not rates:
        return
    print("Pass rate of each grade cell (students with full marks / graded):", file=out)
    for (a, gid), (passed, total) in sorted(rates.items()):
        print(f"  {a:28} {gid:36} {passed:4d}/{total:<4d} {100 * passed / total:5.1f}%", file=out)


def main(args):
    try:
        rows, cells = grade(args.submissions, args.out, jobs=args.jobs, timeout=args.timeout,
                            wall=args.wall, memory_mb=args.memory_mb, network=args.allow_network,
                            progress=not args.quiet, keep=args.keep, only=args.assignments,
                            feedback_hidden=args.feedback_with_hidden_tests)
    except GradeError as exc:
        print(exc.code, file=sys.stderr)
        return 2
    out = Path(args.out)
    print_pass_rates(cells)
    print(f"wrote {out / 'grades.csv'} ({len(rows)} rows: {summary(rows)}), {out / 'cells.csv'} "
          f"and feedback in {out / 'feedback'}/")
    return 0


def add_arguments(parser):
    parser.add_argument("submissions", help="folder with one folder (or file) per student")
    parser.add_argument("--out", required=True, help="where grades.csv, cells.csv and feedback/ go")
    parser.add_argument("--assignments", nargs="+", metavar="NN",
                        help="grade only these notebooks (e.g. 01 05); default: all")
    parser.add_argument("--jobs", type=int, default=1, help="students graded in parallel (default 1)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                        help=f"seconds one cell may run (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--wall", type=int, default=None,
                        help="seconds one notebook may take in all (default 4*timeout+120)")
    parser.add_argument("--memory-mb", type=int, default=3072,
                        help="memory for student code, MB per process (the sandbox as a whole "
                             "gets 1 GB more; default 3072; 0: none)")
    parser.add_argument("--allow-network", action="store_true",
                        help="let student code use the network (default: cut off)")
    parser.add_argument("--feedback-with-hidden-tests", action="store_true",
                        help="show the hidden tests' code in the feedback (default: only their "
                             "failure messages)")
    parser.add_argument("--keep", metavar="DIR", help="keep the grading courses under DIR (debugging)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
