"""Benchmark `grade`: seconds to autograde one complete submission (every notebook, the
solutions) with --jobs 1, and throughput with --jobs 2 (spec §5: <= 90 s per submission)."""
import csv
import shutil
import tempfile
from pathlib import Path

from ..bench import Skip, benchmark


def _submissions(folder, students):
    from .. import paths
    for s in range(students):
        d = Path(folder) / f"student{s}"
        d.mkdir(parents=True)
        for name in paths.assignments():
            shutil.copy(paths.solution_path(name), d / f"{name}.ipynb")


def _run(students, jobs):
    from .. import grade
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as tmp:
        subs, out = Path(tmp) / "subs", Path(tmp) / "out"
        _submissions(subs, students)
        grade.grade(subs, out, jobs=jobs, progress=False)
        with open(out / "grades.csv") as f:
            rows = list(csv.DictReader(f))
    full = all(r["status"] == "graded" and float(r["score"]) == float(r["max_score"]) for r in rows)
    return dict(grade.TIMING), full, rows


@benchmark("grade")
def grading():
    from .. import paths
    if not paths.assignments():
        raise Skip("no notebooks in solutions/")
    one, full1, rows = _run(1, 1)
    two, full2, _ = _run(2, 2)
    not_full = sorted({r["assignment"] for r in rows if float(r["score"]) != float(r["max_score"])})
    return {
        "notebooks": len(paths.assignments()),
        "generate_s": round(one["template_s"], 1),
        "seconds_per_submission_jobs1": round(one["students_s"], 1),
        "target_s": 90,
        "meets_target": one["students_s"] <= 90,
        "jobs2_seconds_for_2": round(two["students_s"], 1),
        "jobs2_seconds_per_submission": round(two["students_s"] / 2, 1),
        "all_full_marks": full1 and full2,
        "not_full_marks": ",".join(not_full) or "-",
    }
