"""python -m grader grade SUBMISSIONS --out DIR [--jobs N] [--timeout SECONDS]

Autograde a folder of student submissions with nbgrader itself and write
DIR/grades.csv and DIR/feedback/<student>/<notebook>.html.

How submissions are found (SUBMISSIONS is only ever read):
- One folder per student (any depth inside it is searched). The folder name is the student,
  minus an LMS suffix such as Moodle's "_assignsubmission_file_".
- Or notebook files directly in SUBMISSIONS, as Canvas exports them
  ("login_[late_]12345_67890_01_gate_equations.ipynb"): the student is the part of the file name
  before the notebook's name, without "late" and numeric ids.
- A student's file is matched to a notebook, best rule first: its exact name
  ("01_gate_equations.ipynb"); a name that contains the notebook's name once punctuation and case
  are ignored ("01-Gate-Equations (2).ipynb"); its content (nbgrader cell ids of that notebook, e.g. a
  notebook saved as "Untitled.ipynb"). Two files tied at the best rule: status "ambiguous".

How it grades: the assignments are generated once from solutions/ into a template course; each
student is graded in a throw-away copy of it (own folder and gradebook, so --jobs workers never
share a database), with grader/grading_config.py: nbgrader's autograde with
OverwriteCells.add_missing_cells (edited or deleted test cells are restored from the source), a
per-cell timeout, and a sandboxed kernel (grader/kernel_launcher.py: memory and process caps, no
network, a new HOME and PID namespace per kernel, an unprivileged user when run as root) whose
hidden tests are immune to monkeypatching
(grader/sandbox.py). All of a student's notebooks go through one `nbgrader autograde` and one
`generate_feedback` (each nbgrader start costs seconds); a notebook that run could not finish is
graded again alone. Scores are read from each worker's gradebook (what `nbgrader export` reads)
and merged into one CSV.

Statuses: graded; timeout (a cell ran past --timeout and was interrupted, the rest was graded; or
the whole notebook ran past the wall-clock limit: 0); missing; ambiguous; unreadable (empty, not
JSON, not a notebook); error (nbgrader could not grade it; the detail column says why).
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .course_dir import Course, NbgraderError

GRADING_CONFIG = Path(__file__).resolve().parent / "grading_config.py"
LAUNCHER = Path(__file__).resolve().parent / "kernel_launcher.py"
STUDENT_ID = "student"  # inside each throw-away course; the real name goes in the CSV
CSV_COLUMNS = ["student", "assignment", "score", "max_score", "status", "detail"]
LMS_SUFFIXES = ("_assignsubmission_file_", "_assignsubmission_onlinetext_", "_onlinetext_", "_file_")
SKIP_PARTS = {"__MACOSX", ".ipynb_checkpoints"}


class GradeError(SystemExit):
    """A user-facing failure: printed as a message, exit status 2."""

    def __init__(self, message):
        super().__init__(f"grade: {message}")


# ---------------------------------------------------------------- finding submissions

def normalize(text):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass
class Student:
    name: str
    files: list = field(default_factory=list)
    found: dict = field(default_factory=dict)      # assignment -> Path
    problems: dict = field(default_factory=dict)   # assignment -> (status, detail)
    unmatched: list = field(default_factory=list)

    @property
    def folder(self):
        """A safe folder name for the student's feedback."""
        return re.sub(r"[^\w.@+-]+", "_", self.name).strip("._") or "student"


def _visible_files(folder):
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") or part in SKIP_PARTS for part in rel):
            continue
        if p.is_file() and not p.is_symlink():
            out.append(p)
    return out


def _grade_ids(path):
    """nbgrader grade ids in a file, or an empty set if it is not a readable notebook."""
    try:
        if path.stat().st_size > 50 << 20:
            return set()
        nb = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                for c in nb.get("cells", []) if isinstance(c, dict)} - {None}
    except (ValueError, OSError, AttributeError, TypeError):
        return set()


def match_files(files, assignments, source_ids):
    """Assign files to notebooks: ({assignment: path}, {assignment: (status, detail)}, unmatched)."""
    found, problems, used = {}, {}, set()
    notebooks = [f for f in files if f.suffix.lower() == ".ipynb"]
    rules = [
        ("name", lambda a, f: f.name == f"{a}.ipynb"),
        ("similar name", lambda a, f: normalize(a) in normalize(f.stem)),
    ]
    for label, rule in rules:
        for a in assignments:
            if a in found or a in problems:
                continue
            hits = [f for f in notebooks if f not in used and rule(a, f)]
            if len(hits) == 1:
                found[a] = hits[0]
                used.add(hits[0])
            elif len(hits) > 1:
                problems[a] = ("ambiguous", f"several files match by {label}: "
                               + ", ".join(sorted(h.name for h in hits)))
                used.update(hits)
    # Content: a renamed notebook still carries the assignment's nbgrader cell ids.
    rest = [f for f in notebooks if f not in used]
    for f in rest:
        ids = _grade_ids(f)
        owners = [a for a in assignments if a not in found and a not in problems
                  and len(ids & source_ids.get(a, set())) >= max(1, len(source_ids.get(a, ())) // 2)]
        if len(owners) == 1:
            found[owners[0]] = f
            used.add(f)
    for a in assignments:
        if a not in found and a not in problems:
            problems[a] = ("missing", "no file for this notebook")
    unmatched = [f for f in files if f not in used]
    return found, problems, unmatched


def _flat_student(stem, assignments):
    """Student name in a Canvas-style flat file name, or None."""
    norm = normalize(stem)
    for a in assignments:
        key = normalize(a)
        pos = norm.find(key)
        if pos > 0:
            tokens = [t for t in norm[:pos].split("_") if t and t != "late" and not t.isdigit()]
            if tokens:
                # Keep the original spelling of the first token where we can.
                return "_".join(tokens)
    return None


def discover(root, assignments, source_ids):
    """(students sorted by name, warnings)."""
    root = Path(root)
    if not root.exists():
        raise GradeError(f"no such folder: {root}")
    if not root.is_dir():
        raise GradeError(f"{root} is a file; give the folder that holds one folder (or file) per student")
    students, warnings = {}, []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name in SKIP_PARTS or entry.is_symlink():
            continue
        if entry.is_dir():
            name = entry.name
            for suffix in LMS_SUFFIXES:
                if name.endswith(suffix) and len(name) > len(suffix):
                    name = name[: -len(suffix)]
                    break
            student = students.setdefault(name, Student(name))
            student.files.extend(_visible_files(entry))
        elif entry.is_file():
            name = _flat_student(entry.stem, assignments)
            if name is None:
                warnings.append(f"ignored {entry.name}: a file at the top level must be named "
                                f"<student>_..._<notebook>.ipynb (or put it in a folder per student)")
                continue
            students.setdefault(name, Student(name)).files.append(entry)
    for student in students.values():
        student.found, student.problems, student.unmatched = match_files(
            student.files, assignments, source_ids)
        if student.unmatched:
            names = ", ".join(str(f.name) for f in student.unmatched[:5])
            for a, (status, detail) in student.problems.items():
                if status == "missing":
                    student.problems[a] = (status, f"{detail} (unmatched files: {names})")
    return [students[k] for k in sorted(students)], warnings


def check_readable(path):
    """None if `path` looks like a notebook nbgrader can read, else a reason."""
    from nbformat import ValidationError, reads, validate
    data = path.read_bytes()
    if not data.strip():
        return "empty file"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not a notebook (not UTF-8 text)"
    try:
        raw = json.loads(text)
    except ValueError as exc:
        return f"not a notebook (invalid JSON: {exc})"
    if not isinstance(raw, dict) or "cells" not in raw:
        return "not a notebook (JSON without cells)"
    try:
        nb = reads(text, as_version=4)
        validate(nb)
    except (ValidationError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"not a valid notebook ({str(exc).splitlines()[0][:200]})"
    return None


# ---------------------------------------------------------------- grading

@dataclass
class Options:
    timeout: int
    wall: int
    memory_mb: int
    file_mb: int
    network: bool
    threads: int
    readonly: tuple = ()
    data: str = ""          # COURSE_DATA for student kernels ("" keeps the caller's)


# Processes and threads one kernel may add: torch's thread pools and a few data-loader workers
# fit many times over; a fork bomb does not.
MAX_TASKS = 512


def kernel_env(root, opts):
    env = paths.tool_env()
    env["GRADER_MEMORY_MB"] = str(opts.memory_mb)
    env["GRADER_FILE_MB"] = str(opts.file_mb)
    env["GRADER_MAX_TASKS"] = str(MAX_TASKS)
    env["GRADER_NO_NETWORK"] = "0" if opts.network else "1"
    env.setdefault("GRADER_USER", "nobody")
    env["OMP_NUM_THREADS"] = str(opts.threads)
    if opts.data:
        env["COURSE_DATA"] = opts.data
    # nbgrader's own HOME: it reads Jupyter config and kernelspecs there, so no kernel may write
    # it. Each kernel gets a new HOME under kernels/ instead (grader/kernel_launcher.py).
    home, runtime, kernels = root / "home", root / "runtime", root / "kernels"
    for d, mode in ((home, 0o755), (home / "tmp", 0o755), (kernels, 0o755), (runtime, 0o1777)):
        d.mkdir(exist_ok=True)
        d.chmod(mode)
    env.update(HOME=str(home), IPYTHONDIR=str(home / ".ipython"), MPLCONFIGDIR=str(home / ".mpl"),
               JUPYTER_RUNTIME_DIR=str(runtime), XDG_CACHE_HOME=str(home / ".cache"),
               TMPDIR=str(home / "tmp"), GRADER_KERNEL_HOMES=str(kernels))
    # The kernel may write its notebook's folder, its own HOME and the runtime folder (its ipc
    # sockets), nothing of ours.
    env["GRADER_READONLY"] = os.pathsep.join(str(p) for p in opts.readonly)
    env["GRADER_WRITABLE"] = str(runtime)
    env.pop("JUPYTER_CONFIG_DIR", None)
    return env


def prepare_data(dest):
    """Decompress the repository's MNIST files into dest/MNIST/raw, readable by every user, and
    return dest; None when the repository has no MNIST files (the notebook then downloads).

    Student kernels run as an unprivileged user under a read-only root: they can neither
    decompress into data/ nor read files that an earlier run left there owner-only."""
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


def probe(opts, homes=None):
    """What the kernel sandbox can do on this machine: {limit: description}. `homes`: a folder
    for the kernel's own HOME, as kernel_env gives it."""
    env = paths.tool_env()
    env.update(GRADER_MEMORY_MB=str(opts.memory_mb), GRADER_FILE_MB=str(opts.file_mb),
               GRADER_MAX_TASKS=str(MAX_TASKS),
               GRADER_NO_NETWORK="0" if opts.network else "1",
               GRADER_READONLY=os.pathsep.join(str(p) for p in opts.readonly))
    if homes:
        Path(homes).mkdir(parents=True, exist_ok=True)
        env["GRADER_KERNEL_HOMES"] = str(homes)
    env.setdefault("GRADER_USER", "nobody")
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


def _nbgrader_error(text):
    """The most useful line of an nbgrader log for a failed notebook."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^\w+(\.\w+)*(Error|Exception|Interrupt)\b", lines[i]):
            return lines[i][:300]
    errors = [line for line in lines if "ERROR" in line]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:300]


def _inspect_autograded(path):
    """(timed-out cells, guard problems) from an autograded notebook."""
    timeouts, guard = [], []
    nb = json.loads(path.read_text())
    for cell in nb.get("cells", []):
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "?")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                if out.get("ename") == "CellTimeoutError":
                    timeouts.append(gid)
                elif out.get("ename") == "GradingGuardError":
                    guard.append(gid)
    return timeouts, guard


def grade_student(index, student, template, work, out_dir, assignments, max_scores, opts):
    """Grade one student in a throw-away course; return CSV rows (dicts)."""
    root = work / f"s{index:05d}"
    shutil.copytree(template, root)
    course = Course(root, timeout=opts.timeout, config=GRADING_CONFIG)
    course.generated = set(assignments)
    env = kernel_env(root, opts)
    by_name = {}

    def row(a, status, detail="", score=0.0):
        by_name[a] = {"student": student.name, "assignment": a, "score": round(score, 4),
                      "max_score": max_scores[a], "status": status, "detail": detail}

    submitted = {}
    for a in assignments:
        if a in student.problems:
            row(a, *student.problems[a])
            continue
        src = student.found[a]
        reason = check_readable(src)
        if reason:
            row(a, "unreadable", f"{src.name}: {reason}")
            continue
        target = course.submit(STUDENT_ID, a, src)
        target.chmod(0o444)
        submitted[a] = src

    # All of them in one nbgrader process (its start costs seconds per run). A notebook that
    # nbgrader failed on, or that a kill for another one's wall-clock limit left unstarted, is
    # graded again alone, so its result and message are what a run of its own gives.
    batch, overran = (course.autograde_submitted(STUDENT_ID, env=env, wall=opts.wall)
                      if submitted else (None, None))
    wall_note = f"still running after {opts.wall} s (wall-clock limit); stopped, scored 0"
    for a, src in submitted.items():
        if a == overran:
            row(a, "timeout", f"{src.name}: {wall_note}")
            continue
        proc = batch
        if not course.autograde_complete(a, STUDENT_ID):
            try:
                proc = course.autograde(a, student=STUDENT_ID, env=env, timeout=opts.wall)
            except subprocess.TimeoutExpired:
                row(a, "timeout", f"{src.name}: {wall_note}")
                continue
            if proc.returncode != 0 or not course.autograde_complete(a, STUDENT_ID):
                row(a, "error", f"{src.name}: nbgrader could not grade it: "
                    f"{_nbgrader_error(proc.stderr)}")
                continue
        score, _ = course.total(a, STUDENT_ID)
        timeouts, guard = _inspect_autograded(course.autograded_notebook(STUDENT_ID, a))
        detail = src.name if src.name != f"{a}.ipynb" else ""
        if guard:
            detail += f" guard failed before {', '.join(guard)} (scored 0)"
        if timeouts:
            row(a, "timeout", f"{detail} cells past {opts.timeout} s: {', '.join(timeouts)}".strip(),
                score)
        else:
            row(a, "graded", detail.strip(), score)
    rows = [by_name[a] for a in assignments]

    done = [r["assignment"] for r in rows if r["status"] in ("graded", "timeout")
            and course.autograded_notebook(STUDENT_ID, r["assignment"]).exists()]
    # One nbgrader process for all of them (each start costs seconds); any that it left without
    # feedback are retried alone, so one bad notebook cannot take the others' feedback with it.
    batch = None
    if len(done) > 1:
        batch = course.run("generate_feedback", "*", f"--student={STUDENT_ID}", "--force", env=env)
    for a in done:
        proc = batch
        if not course.feedback_html(STUDENT_ID, a).exists():
            proc = course.run("generate_feedback", a, f"--student={STUDENT_ID}", "--force", env=env)
        html = course.feedback_html(STUDENT_ID, a)
        if html.exists():
            dest = out_dir / "feedback" / student.folder / f"{a}.html"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(html, dest)
        else:
            for r in rows:
                if r["assignment"] == a:
                    r["detail"] = (r["detail"] + " (no feedback: "
                                   + _nbgrader_error(proc.stderr) + ")").strip()
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r)


TIMING = {}  # seconds of the last grade() call: template_s (generate), students_s (grading)
DEFAULT_TIMEOUT = 300  # seconds per cell, as in nbgrader_config.py (notebook 06 trains there)


def grade(submissions, out_dir, jobs=1, timeout=DEFAULT_TIMEOUT, wall=None, memory_mb=3072,
          file_mb=200, network=False, progress=True, keep=None, only=None):
    """Grade SUBMISSIONS into OUT_DIR; return the rows written to OUT_DIR/grades.csv.
    `only`: assignment names or numbers to grade (default: every notebook in solutions/)."""
    submissions, out_dir = Path(submissions).resolve(), Path(out_dir).resolve()
    assignments = paths.assignments()
    if only:
        try:
            assignments = [paths.resolve_assignment(a) for a in only]
        except SystemExit as exc:
            raise GradeError(str(exc)) from None
    if not assignments:
        raise GradeError(f"no notebooks in {paths.SOLUTIONS}")
    if out_dir == submissions or submissions in out_dir.parents:
        raise GradeError("--out must not be inside SUBMISSIONS (submissions are never modified)")
    import nbformat
    source_ids = {}
    for a in assignments:
        nb = nbformat.read(paths.solution_path(a), as_version=4)
        source_ids[a] = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}
    students, warnings = discover(submissions, assignments, source_ids)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not students:
        raise GradeError(f"no student submissions in {submissions} (expected one folder per "
                         f"student, or files named <student>_<notebook>.ipynb)")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, int(jobs))
    opts = Options(timeout=int(timeout), wall=int(wall or 4 * timeout + 120), memory_mb=memory_mb,
                   file_mb=file_mb, network=network,
                   threads=max(1, (os.cpu_count() or 1) // jobs))
    work_parent = Path(keep) if keep else None
    if work_parent:
        work_parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="course-grade-", dir=work_parent)
    os.chmod(tmp, 0o755)
    work = Path(tmp)
    # "/" first: the whole root file system read-only for student code where the OS allows it;
    # our folders named explicitly in case they live on other mounts.
    opts.readonly = tuple(dict.fromkeys(["/", paths.ROOT, work, submissions, out_dir]))
    rows = []
    try:
        sandbox = probe(opts, homes=work / "probe")
        print("Student code runs with: " + "; ".join(f"{k} {v}" for k, v in sandbox.items()),
              file=sys.stderr)
        print(f"Generating {len(assignments)} assignment(s) from solutions/ ...", file=sys.stderr)
        started = time.perf_counter()
        data = prepare_data(work / "data")
        opts.data = str(data) if data else ""
        max_scores = build_template(work / "template", assignments)
        TIMING["template_s"] = time.perf_counter() - started
        started = time.perf_counter()
        from tqdm import tqdm
        bar = tqdm(total=len(students), unit="student", desc="grading", disable=not progress,
                   file=sys.stderr)
        lock = threading.Lock()
        results = {}
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(grade_student, i, s, work / "template", work, out_dir,
                                   assignments, max_scores, opts): s
                       for i, s in enumerate(students)}
            for fut in as_completed(futures):
                student = futures[fut]
                try:
                    results[student.name] = fut.result()
                except Exception as exc:  # noqa: BLE001 - one student's failure never stops the batch
                    results[student.name] = [
                        {"student": student.name, "assignment": a, "score": 0.0,
                         "max_score": max_scores[a], "status": "error",
                         "detail": f"grader failure: {type(exc).__name__}: {exc}"[:300]}
                        for a in assignments]
                with lock:
                    bar.update(1)
        bar.close()
        TIMING["students_s"] = time.perf_counter() - started
        for s in students:
            rows.extend(results[s.name])
        write_csv(out_dir / "grades.csv", rows)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def summary(rows):
    by_status = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(by_status.items()))


def main(args):
    try:
        rows = grade(args.submissions, args.out, jobs=args.jobs, timeout=args.timeout,
                     wall=args.wall, memory_mb=args.memory_mb, network=args.allow_network,
                     progress=not args.quiet, keep=args.keep, only=args.assignments)
    except GradeError as exc:
        print(exc.code, file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"wrote {out / 'grades.csv'} ({len(rows)} rows: {summary(rows)}) and feedback in "
          f"{out / 'feedback'}/")
    return 0


def add_arguments(parser):
    parser.add_argument("submissions", help="folder with one folder (or file) per student")
    parser.add_argument("--out", required=True, help="where grades.csv and feedback/ go")
    parser.add_argument("--assignments", nargs="+", metavar="NN",
                        help="grade only these notebooks (e.g. 01 05); default: all")
    parser.add_argument("--jobs", type=int, default=1, help="students graded in parallel (default 1)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                        help=f"seconds one cell may run (default {DEFAULT_TIMEOUT})")
    parser.add_argument("--wall", type=int, default=None,
                        help="seconds one notebook may take in all (default 4*timeout+120)")
    parser.add_argument("--memory-mb", type=int, default=3072,
                        help="data-segment cap for student code, MB (default 3072; notebook 06 did not fit in 2048; 0: none)")
    parser.add_argument("--allow-network", action="store_true",
                        help="let student code use the network (default: cut off where possible)")
    parser.add_argument("--keep", metavar="DIR", help="keep the grading courses under DIR (debugging)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
