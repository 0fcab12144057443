"""Grade one student: the grader's unit of work, a process of its own.

    python -m grader.worker SPEC.json RESULT.json

SPEC (written by `grader grade`): {"student": label, "root": a new folder for this student's
course, "template": the generated course to copy, "notebooks": {assignment: path of the cleaned
notebook}, "max_scores": {...}, "timeout": s, "wall": s, "feedback_hidden": bool}.
RESULT: {"rows": [{assignment, score, status, detail}], "cells": [{assignment, grade_id, score,
max_score}], "feedback": {assignment: html}}.

Everything about one student happens here, in a throw-away nbgrader course of its own: one
`nbgrader autograde` for all the student's notebooks (each start costs seconds), a notebook it
could not finish graded again alone, one `generate_feedback`. Student code runs only in the
sandboxed kernels that nbgrader starts (grader/grading_config.py), and nothing those kernels can
write is ever read or followed by this process: they see none of this folder.
"""
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from . import paths
from .course_dir import Course

GRADING_CONFIG = Path(__file__).resolve().parent / "grading_config.py"
STUDENT_ID = "student"   # inside each throw-away course; the real name is in the CSV
MAX_FEEDBACK_BYTES = 8 << 20


def nbgrader_error(text):
    """The most useful line of an nbgrader log for a failed notebook."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^\w+(\.\w+)*(Error|Exception|Interrupt)\b", lines[i]):
            return lines[i][:300]
    errors = [line for line in lines if "ERROR" in line]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:300]


def inspect_autograded(path):
    """(timed-out grade cells, judge problems) from an autograded notebook. Only grade cells
    count: their outputs are written by the grader alone, while a student's own cell can raise
    an exception of any name."""
    timeouts, judge = [], []
    nb = json.loads(path.read_text())
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if not meta.get("grade") or cell.get("cell_type") != "code":
            continue
        gid = meta.get("grade_id", "?")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                if out.get("ename") == "CellTimeoutError":
                    timeouts.append(gid)
                elif out.get("ename") == "GradingError":
                    judge.append((gid, str(out.get("evalue", ""))))
    return timeouts, judge


def grade(spec):
    root = Path(spec["root"])
    shutil.copytree(spec["template"], root)
    course = Course(root, timeout=spec["timeout"], config=GRADING_CONFIG)
    course.generated = set(spec["max_scores"])
    wall = spec["wall"]
    rows, cells = {}, []

    for a, src in spec["notebooks"].items():
        target = course.submit(STUDENT_ID, a, src)
        target.chmod(0o444)

    batch, overran = course.autograde_submitted(STUDENT_ID, wall=wall)
    wall_note = f"still running after {wall} s (wall-clock limit); stopped, scored 0"
    for a in spec["notebooks"]:
        if a == overran:
            rows[a] = ("timeout", wall_note, 0.0)
            continue
        proc = batch
        if not course.autograde_complete(a, STUDENT_ID):
            try:
                proc = course.autograde(a, student=STUDENT_ID, timeout=wall)
            except subprocess.TimeoutExpired:
                rows[a] = ("timeout", wall_note, 0.0)
                continue
            if proc.returncode != 0 or not course.autograde_complete(a, STUDENT_ID):
                rows[a] = ("error", f"nbgrader could not grade it: {nbgrader_error(proc.stderr)}", 0.0)
                continue
        score, _ = course.total(a, STUDENT_ID)
        for gid, (s, m) in course.scores(a, STUDENT_ID).items():
            cells.append({"assignment": a, "grade_id": gid, "score": s, "max_score": m})
        timeouts, judge = inspect_autograded(course.autograded_notebook(STUDENT_ID, a))
        detail = ""
        if judge:
            why = judge[0][1].split(" (")[0][:160]
            detail = (f"the tests of {', '.join(g for g, _ in judge)} could not run (scored 0): "
                      f"{why}")
        if timeouts:
            rows[a] = ("timeout", f"{detail} cells past {spec['timeout']} s: "
                       f"{', '.join(timeouts)}".strip(), score)
        else:
            rows[a] = ("graded", detail, score)

    done = [a for a, (status, _, _) in rows.items() if status in ("graded", "timeout")
            and course.autograded_notebook(STUDENT_ID, a).exists()]
    feedback, notes = {}, {}
    limit = max(120, 30 * len(done))
    batch = None
    if len(done) > 1:
        batch = _feedback(course, "*", limit)
    for a in done:
        proc = batch
        if not course.feedback_html(STUDENT_ID, a).exists():
            proc = _feedback(course, a, limit)
        html = course.feedback_html(STUDENT_ID, a)
        if html.exists() and html.stat().st_size <= MAX_FEEDBACK_BYTES:
            feedback[a] = html.read_text(errors="replace")
        else:
            why = "too large" if html.exists() else (nbgrader_error(proc.stderr) if proc else "not written")
            notes[a] = f"(no feedback: {why})"
    out_rows = []
    for a, (status, detail, score) in rows.items():
        if a in notes:
            detail = f"{detail} {notes[a]}".strip()
        out_rows.append({"assignment": a, "status": status, "detail": detail, "score": score})
    return {"rows": out_rows, "cells": cells, "feedback": feedback}


def _feedback(course, which, limit):
    try:
        return course.run("generate_feedback", which, f"--student={STUDENT_ID}", "--force",
                          timeout=limit)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess([], -9, "", f"TimeoutError: feedback took over {limit} s")


def bound_memory():
    """Cap this worker and the nbgrader processes it starts (they run as root, outside every
    sandbox): whatever a kernel sends that slips past the output caps costs this student's row,
    never the machine. Sandboxes below set their own, lower limit."""
    mb = max(4096, int(os.environ.get("GRADER_MEMORY_MB") or 0) + 1024)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (mb << 20, mb << 20))
    except (ValueError, OSError):
        pass


def main(argv):
    bound_memory()
    spec = json.loads(Path(argv[1]).read_text())
    result = grade(spec)
    Path(argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
