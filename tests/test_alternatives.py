"""Other correct answers earn full marks; plausible wrong answers lose the right points, with the
message a student needs (tests/alternatives/nbNN_*.py hold them, written from the student
notebooks alone).

One `grader grade` batch (the real grader: nbgrader, the sandbox, the judge) grades:
- students alt0 and alt1: every notebook with every answer cell replaced by its first
  (second) alternative: full marks in every notebook;
- students wrongN: each notebook with at most one wrong answer per answer cell (round N): the
  named grade cell scores 0, its notebook's feedback shows the promised phrase, and the grade
  cells of the other answer cells keep their points.
"""
import csv
import html
import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader import paths

ROOT = Path(__file__).resolve().parent.parent
ALTERNATIVES = ROOT / "tests" / "alternatives"


def _load(name):
    path = ALTERNATIVES / f"nb{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"alternatives_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta(cell):
    return cell.metadata.get("nbgrader", {})


def _answer_ids(nb):
    return [_meta(c)["grade_id"] for c in nb.cells
            if _meta(c).get("solution") and not _meta(c).get("grade") and c.cell_type == "code"]


def _grade_owner(nb):
    """{grade cell id: answer cell id it follows}."""
    owner, current = {}, None
    for c in nb.cells:
        m = _meta(c)
        if m.get("solution") and not m.get("grade") and c.cell_type == "code":
            current = m["grade_id"]
        elif m.get("grade") and c.cell_type == "code":
            owner[m["grade_id"]] = current
    return owner


def _with_answers(name, replace):
    nb = nbformat.read(paths.solution_path(name), as_version=4)
    for cell in nb.cells:
        gid = _meta(cell).get("grade_id")
        if gid in replace and _meta(cell).get("solution"):
            cell.source = replace[gid]
    return nb


@pytest.mark.parametrize("name", paths.assignments())
def test_every_exercise_has_two_alternatives_and_wrong_answers(name):
    module = _load(name)
    assert module is not None, f"tests/alternatives/nb{name}.py is missing"
    nb = nbformat.read(paths.solution_path(name), as_version=4)
    for gid in _answer_ids(nb):
        alts = module.ALTERNATIVES.get(gid, [])
        assert len(alts) >= 2, f"{name}: answer cell {gid} needs two alternatives, has {len(alts)}"
        assert len(set(alts)) == len(alts), f"{name}: {gid} has identical alternatives"
    ids = [_meta(c).get("grade_id") for c in nb.cells]
    grades = {_meta(c)["grade_id"] for c in nb.cells if _meta(c).get("grade") and c.cell_type == "code"}
    assert module.WRONG, f"{name}: no wrong answers"
    for answer, _, cell, phrase in module.WRONG:
        assert answer in _answer_ids(nb), f"{name}: unknown answer cell {answer}"
        # A grade cell may check an answer written further up (06 checks padding in lstm_direction
        # after the packing helpers), never one written below it.
        assert cell in grades and ids.index(cell) > ids.index(answer), \
            f"{name}: {cell} is not a grade cell below {answer}"
        assert phrase.strip(), f"{name}: a wrong answer without the message it must produce"


def _rounds(wrong):
    """WRONG entries in rounds of at most one per answer cell."""
    rounds = []
    for entry in wrong:
        for r in rounds:
            if all(e[0] != entry[0] for e in r):
                r.append(entry)
                break
        else:
            rounds.append([entry])
    return rounds


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alternatives")
    subs, out = tmp / "submissions", tmp / "out"
    plan = {}          # (student, notebook) -> [(grade cell, phrase)] that must fail
    for name in paths.assignments():
        module = _load(name)
        if module is None:
            continue
        nb = nbformat.read(paths.solution_path(name), as_version=4)
        for k in (0, 1):
            picks = {gid: alts[min(k, len(alts) - 1)] for gid, alts in module.ALTERNATIVES.items()
                     if alts and gid in _answer_ids(nb)}
            path = subs / f"alt{k}" / f"{name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(_with_answers(name, picks), path)
            plan[(f"alt{k}", name)] = []
        for r, entries in enumerate(_rounds(module.WRONG)):
            path = subs / f"wrong{r}" / f"{name}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(_with_answers(name, {e[0]: e[1] for e in entries}), path)
            plan[(f"wrong{r}", name)] = [(e[2], e[3], e[0]) for e in entries]
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(subs), "--out", str(out),
                           "--jobs", "2", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                          timeout=5400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "grades.csv") as f:
        rows = {(r["student"], r["assignment"]): r for r in csv.DictReader(f)}
    with open(out / "cells.csv") as f:
        cells = {(r["student"], r["assignment"], r["grade_id"]): r for r in csv.DictReader(f)}
    return dict(plan=plan, rows=rows, cells=cells, out=out)


@pytest.mark.slow
def test_alternative_answers_earn_full_marks(graded):
    short = []
    for (student, name), _ in graded["plan"].items():
        if not student.startswith("alt"):
            continue
        r = graded["rows"][(student, name)]
        if r["status"] != "graded" or float(r["score"]) != float(r["max_score"]):
            lost = [gid for (s, a, gid), c in graded["cells"].items()
                    if s == student and a == name and float(c["score"]) < float(c["max_score"])]
            short.append(f"{student} {name}: {r['score']}/{r['max_score']} {r['status']} "
                         f"{r['detail']} (lost: {', '.join(lost)})")
    assert not short, "\n".join(short)


@pytest.mark.slow
def test_wrong_answers_lose_their_points_with_a_message(graded):
    problems = []
    for (student, name), expect in graded["plan"].items():
        if not student.startswith("wrong"):
            continue
        nb = nbformat.read(paths.solution_path(name), as_version=4)
        owner = _grade_owner(nb)
        broken = {answer for _, _, answer in expect}
        feedback = graded["out"] / "feedback" / student / f"{name}.html"
        text = html.unescape(feedback.read_text()) if feedback.exists() else ""
        for cell, phrase, _ in expect:
            c = graded["cells"].get((student, name, cell))
            if c is None or float(c["score"]) != 0:
                problems.append(f"{name} {cell}: kept its points for a wrong answer")
            if phrase not in text:
                problems.append(f"{name} {cell}: the feedback does not say {phrase!r}")
        # Exercises before the first broken one cannot depend on it: they keep their points.
        order = _answer_ids(nb)
        first = min(order.index(a) for a in broken)
        for (s, a, gid), c in graded["cells"].items():
            if s == student and a == name and owner.get(gid) in order[:first] \
                    and float(c["score"]) != float(c["max_score"]):
                problems.append(f"{name} {gid}: lost points for a later exercise's wrong answer")
    assert not problems, "\n".join(problems)
