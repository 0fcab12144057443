"""`python -m grader grade`: finding submissions, and the corpus of bad submissions end to end.

The slow test grades notebook 01 for every corpus submission (tests/fixtures/corpus.py builds
them from the current solutions/ and notebooks/), with --jobs 2, and asserts each score, that
the batch finished, and that SUBMISSIONS is byte-identical afterwards.
"""
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader import grade, paths

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("corpus", ROOT / "tests" / "fixtures" / "corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

A = "01_gate_equations"


def _ids(name):
    nb = nbformat.read(paths.solution_path(name), as_version=4)
    return {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}


# ------------------------------------------------------------------ fast: matching and discovery

def test_match_rules(tmp_path):
    names = [A, "03_counting_parameters"]
    ids = {n: _ids(n) if paths.solution_path(n).exists() else set() for n in names}
    exact = tmp_path / f"{A}.ipynb"
    exact.write_text("{}")
    similar = tmp_path / "02-Counting-Parameters (3).ipynb"
    similar.write_text("{}")
    stray = tmp_path / "notes.txt"
    stray.write_text("hi")
    found, problems, unmatched = grade.match_files([exact, similar, stray], names, ids)
    assert found == {A: exact, "03_counting_parameters": similar}
    assert problems == {} and unmatched == [stray]


def test_content_match_ambiguous_and_missing(tmp_path):
    untitled = tmp_path / "Untitled.ipynb"
    untitled.write_bytes(paths.solution_path(A).read_bytes())
    found, problems, _ = grade.match_files([untitled], [A], {A: _ids(A)})
    assert found == {A: untitled}, "a renamed notebook is recognised by its nbgrader cell ids"

    one, two = tmp_path / f"{A}-v1.ipynb", tmp_path / f"{A}-v2.ipynb"
    one.write_text("{}")
    two.write_text("{}")
    found, problems, _ = grade.match_files([one, two], [A], {A: set()})
    assert found == {} and problems[A][0] == "ambiguous"
    found, problems, _ = grade.match_files([], [A], {A: set()})
    assert problems[A][0] == "missing"


def test_discover_lms_shapes(tmp_path):
    (tmp_path / "Jane Doe_42_assignsubmission_file_" / "sub").mkdir(parents=True)
    (tmp_path / "Jane Doe_42_assignsubmission_file_" / "sub" / f"{A}.ipynb").write_text("{}")
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "bob" / ".ipynb_checkpoints" / f"{A}-checkpoint.ipynb").write_text("{}")
    (tmp_path / f"smithj_late_123_456_{A}.ipynb").write_text("{}")
    (tmp_path / "README.txt").write_text("top-level file without a notebook name")
    students, warnings = grade.discover(tmp_path, [A], {A: set()})
    by_name = {s.name: s for s in students}
    assert set(by_name) == {"Jane Doe_42", "bob", "smithj"}
    assert A in by_name["Jane Doe_42"].found and A in by_name["smithj"].found
    assert by_name["bob"].problems[A][0] == "missing", "checkpoints are never graded"
    assert any("README.txt" in w for w in warnings)


def test_check_readable(tmp_path):
    cases = {"empty.ipynb": b"", "blank.ipynb": b"  \n", "bad.ipynb": b"{not json",
             "list.ipynb": b"[1, 2]", "bin.ipynb": b"\xff\xfe\x00"}
    for fname, data in cases.items():
        (tmp_path / fname).write_bytes(data)
        assert grade.check_readable(tmp_path / fname), fname
    assert grade.check_readable(paths.solution_path(A)) is None


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "grader", *args], cwd=ROOT, capture_output=True,
                          text=True)


def test_clear_messages(tmp_path):
    proc = _cli("grade", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = _cli("grade", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no student submissions" in proc.stderr
    proc = _cli("grade", str(tmp_path / "empty"), "--out", str(tmp_path / "empty" / "o"))
    assert proc.returncode == 2 and "must not be inside" in proc.stderr
    proc = _cli("grade", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--assignments", "99")
    assert proc.returncode == 2 and "No notebook called" in proc.stderr


def test_sandbox_probe_reports_every_limit(tmp_path):
    opts = grade.Options(timeout=10, wall=60, memory_mb=2048, file_mb=10, network=False, threads=1,
                         readonly=(str(ROOT),))
    report = grade.probe(opts, homes=tmp_path)
    assert report["memory"].startswith("on")
    assert "network" in report and "files" in report   # on, or "unavailable: why"
    assert report["home"] == "new and empty for each kernel"
    assert "processes" in report and "tasks" in report
    homes = list(tmp_path.iterdir())
    assert len(homes) == 1 and sorted(p.name for p in homes[0].iterdir()) == [
        ".cache", ".ipython", ".mpl", "tmp"]


def test_launcher_will_not_start_a_kernel_as_root(tmp_path):
    """When the kernel should drop to another user and cannot, it must not start at all: root
    could undo the read-only mounts and the limits."""
    opts = grade.Options(timeout=10, wall=60, memory_mb=0, file_mb=0, network=False, threads=1)
    if not grade.probe(opts).get("user", "").startswith("uid "):
        pytest.skip("the grader does not switch users here (not root)")
    env = paths.tool_env()
    env.setdefault("GRADER_USER", "nobody")
    proc = subprocess.run([sys.executable, str(grade.LAUNCHER), "id", "-f", str(tmp_path / "gone.json")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "not starting the kernel as root" in proc.stderr
    assert "uid=" not in proc.stdout


# ------------------------------------------------------------------ slow: the corpus, end to end

@pytest.mark.slow
def test_corpus(tmp_path):
    subs = tmp_path / "submissions"
    subs.mkdir()
    expected = corpus.build(subs, A)
    before = corpus.tree_digest(subs)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "grader", "grade", str(subs), "--out", str(out), "--jobs", "2",
         "--timeout", "30", "--assignments", "01", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert corpus.tree_digest(subs) == before, "SUBMISSIONS must be byte-identical afterwards"

    with open(out / "grades.csv") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(expected), "one row per student and notebook (the batch finished)"
    full = corpus.max_score(nbformat.read(paths.solution_path(A), as_version=4))
    wrong = float(rows["wrong"]["score"])
    assert wrong < full, "the wrong-answer control must lose points"
    problems = []
    for student, exp in expected.items():
        r = rows[student]
        want = wrong if exp.score == "wrong" else exp.score
        got = float(r["score"])
        ok_score = got < full if want == "below full" else abs(got - float(want)) < 1e-9
        if not ok_score or r["status"] != exp.status or float(r["max_score"]) != full:
            problems.append(f"{student}: got {got}/{r['max_score']} {r['status']} ({r['detail']}), "
                            f"want {want} {exp.status} ({exp.note})")
    assert not problems, "\n".join(problems)

    # Feedback for every graded notebook; the 30 MB print is truncated in it.
    for student, r in rows.items():
        html = out / "feedback" / grade.Student(student).folder / f"{A}.html"
        assert html.exists() == (r["status"] in ("graded", "timeout")), student
    assert (out / "feedback" / "renamed_loud" / f"{A}.html").stat().st_size < 3_000_000
    hog = (out / "feedback" / "memory_hog" / f"{A}.html").read_text()
    assert "MEMORY: refused" in hog and "MEMORY: allocated" not in hog
    hostile = (out / "feedback" / "hostile" / f"{A}.html").read_text()
    assert "WROTE OUTSIDE: nothing" in hostile
    if "network off" in proc.stderr:
        assert "NETWORK: blocked" in hostile
    for where in (ROOT, ROOT.parent, Path("/tmp"), Path("/"), tmp_path, subs, out):
        assert not (where / "CORPUS_PWNED").exists(), where


# Leaves code where a later kernel or nbgrader process would run it: an IPython startup file, a
# .pth in user site-packages, a Jupyter config file in HOME.
PLANT = """
import os as _os, pathlib as _pl, site as _site
_home = _pl.Path(_os.environ.get("HOME", "~")).expanduser()
for _path, _code in [
        (_home / ".jupyter" / "nbgrader_config.py", "open({marker!r}, 'w').close()"),
        (_pl.Path(_os.environ.get("IPYTHONDIR", _home / ".ipython")) / "profile_default" / "startup"
         / "00-planted.py", "import builtins; builtins.PLANTED = 'startup file'"),
        (_pl.Path(_site.getusersitepackages()) / "planted.pth", "import builtins; builtins.PLANTED = 'pth'")]:
    try:
        _path.parent.mkdir(parents=True, exist_ok=True)
        _path.write_text(_code + "\\n")
    except OSError:
        pass
"""


# A daemon in a new session, and a fork bomb; each process is a `sleep` the test can find.
DAEMON = """
import subprocess
subprocess.Popen(["sleep", "3001"], start_new_session=True)
"""
FORK_BOMB = """
import os
forked = 0
try:
    for _ in range(20_000):
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", "3002"])
        forked += 1
    print("FORK BOMB: not stopped")
except OSError:
    print("FORK BOMB: stopped")
"""


def _leftovers():
    proc = subprocess.run(["pgrep", "-f", "sleep 300[12]"], capture_output=True, text=True)
    return proc.stdout.split()


@pytest.mark.slow
def test_one_student_many_notebooks(tmp_path):
    """A student's notebooks are autograded in one nbgrader run; one that runs past the wall-clock
    limit, or that nbgrader cannot grade, costs only its own marks: the others are graded (alone,
    when the run stopped before them) and a half-run notebook never reads as a score. Nothing a
    notebook leaves in its HOME runs in a later kernel or in the grader."""
    a1, a2, a3, a4 = paths.assignments()[:4]
    sol = {a: nbformat.read(paths.solution_path(a), as_version=4) for a in (a1, a2, a3, a4)}
    marker = tmp_path / "GRADER_RAN_PLANTED_CONFIG"
    planter = nbformat.from_dict(sol[a1])
    planter.cells.append(nbformat.v4.new_code_cell(PLANT.format(marker=str(marker)) + DAEMON))
    checker = nbformat.from_dict(sol[a4])
    checker.cells.append(nbformat.v4.new_code_cell(
        "import builtins, os\nprint('PLANTED:', getattr(builtins, 'PLANTED', 'nothing'))\n"
        "print(f'UID: {os.getuid()}.')"))
    slow = nbformat.from_dict(sol[a2])   # every cell under --timeout, the whole over --wall
    for _ in range(3):
        slow.cells.insert(3, nbformat.v4.new_code_cell("import time\ntime.sleep(7)"))
    odd = nbformat.from_dict(sol[a3])     # nbgrader itself fails on this cell's metadata
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.metadata["nbgrader"] = {"schema_version": 99, "grade_id": "mine", "solution": False,
                                 "grade": False, "locked": False}
    odd.cells.insert(3, cell)
    bomb = nbformat.from_dict(sol[a4])    # after its last test
    bomb.cells.append(nbformat.v4.new_code_cell(FORK_BOMB))
    subs = tmp_path / "submissions"
    for student, nbs in {"mixed": {a1: planter, a2: slow, a3: odd, a4: checker},
                         "odd_first": {a3: odd, a4: bomb}}.items():
        (subs / student).mkdir(parents=True)
        for a, nb in nbs.items():
            nbformat.write(nb, subs / student / f"{a}.ipynb")
    assert not _leftovers(), "sleep 3001/3002 already running: the check below would be wrong"
    rows = grade.grade(subs, tmp_path / "out", timeout=10, wall=15, progress=False,
                       only=[a1, a2, a3, a4])
    got = {(r["student"], r["assignment"]): (r["score"], r["status"]) for r in rows}
    full = {a: corpus.max_score(sol[a]) for a in sol}
    assert got == {
        ("mixed", a1): (full[a1], "graded"), ("mixed", a2): (0, "timeout"),
        ("mixed", a3): (0, "error"), ("mixed", a4): (full[a4], "graded"),
        ("odd_first", a1): (0, "missing"), ("odd_first", a2): (0, "missing"),
        ("odd_first", a3): (0, "error"), ("odd_first", a4): (full[a4], "graded")}, got
    assert "wall-clock" in next(r["detail"] for r in rows if r["assignment"] == a2)
    for student, a in (("mixed", a1), ("mixed", a4), ("odd_first", a4)):
        assert (tmp_path / "out" / "feedback" / student / f"{a}.html").exists()
    checked = (tmp_path / "out" / "feedback" / "mixed" / f"{a4}.html").read_text()
    assert "PLANTED: nothing" in checked
    assert not marker.exists(), "nbgrader ran a config file that student code wrote"
    sandbox = grade.probe(grade.Options(10, 15, 3072, 200, False, 1), homes=tmp_path / "probe")
    if sandbox.get("user", "").startswith("uid "):
        assert f"UID: {sandbox['user'].split()[1]}." in checked, "the kernel is not the sandbox user"
    if sandbox.get("processes") == "own PID namespace":
        assert not _leftovers(), "a process started by student code outlived its kernel"
        bombed = (tmp_path / "out" / "feedback" / "odd_first" / f"{a4}.html").read_text()
        assert "FORK BOMB: stopped" in bombed


# ------------------------------------------------------------------ the guard, without nbgrader's db

def _cell(kind, source, **meta):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade_id": meta.pop("gid"), "schema_version": 3, "task": False,
                                 "solution": kind == "answer", "grade": kind == "test",
                                 "locked": kind != "answer", **meta}
    return cell


def test_guard_defeats_monkeypatching(tmp_path):
    """A grade cell sees pristine torch/builtins although the answer cell patched them."""
    from grader.sandbox import GuardedExecute
    from nbgrader.preprocessors import Execute
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _cell("setup", "import torch\nfrom torch import nn\n_helper = lambda: 'instructor'", gid="setup"),
        _cell("answer", "import builtins\n" + corpus.CHEAT + "\n_helper = lambda: 'student'\n"
              "nn = None\n", gid="answer"),
        _cell("test", "assert not torch.allclose(torch.zeros(2), torch.ones(2))\n"
              "assert not torch.equal(torch.zeros(2), torch.ones(2))\n"
              "assert not all([False]) and abs(-1) == 1\n"
              "assert not bool(torch.zeros(1) == torch.ones(1))\n"
              "assert _helper() == 'instructor' and nn.LSTM is torch.nn.LSTM\n", gid="test", points=1),
        _cell("test", "assert all([True]) is True\n", gid="test2", points=1),
    ]
    resources = {"metadata": {"path": str(tmp_path)}}
    guarded = GuardedExecute(timeout=120).preprocess(nbformat.from_dict(nb), dict(resources))[0]
    errors = [o for c in guarded.cells[2:] for o in c.outputs if o.output_type == "error"]
    assert not errors, [f"{o.ename}: {o.evalue}" for o in errors]
    # The control: nbgrader's own Execute lets the patches through, so the test cell passes
    # only because of the guard.
    plain = Execute(timeout=120).preprocess(nbformat.from_dict(nb), dict(resources))[0]
    assert any(o.output_type == "error" for o in plain.cells[2].outputs)


# ------------------------------------------------------------------ every solution, through the sandbox

def test_prepare_data_is_readable_by_every_user(tmp_path):
    """Student kernels run as another user: the MNIST files they read must not be owner-only."""
    import stat
    data = grade.prepare_data(tmp_path / "data")
    assert data is not None, "the repository's data/MNIST/raw/*.gz are missing"
    files = sorted((data / "MNIST" / "raw").iterdir())
    assert [f.name for f in files] == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
                                       "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    for f in files:
        assert f.stat().st_mode & stat.S_IROTH, f"{f.name} is not readable by other users"
    assert (data / "MNIST" / "raw" / "train-labels-idx1-ubyte").stat().st_size == 60008


@pytest.mark.slow
def test_grade_gives_every_solution_full_marks_in_few_nbgrader_runs(tmp_path, monkeypatch):
    """The sandbox (another user, read-only files, memory cap, no network) must not cost a
    correct submission a point in any notebook — notebook 06 reads MNIST and trains in it.
    And a complete submission takes one nbgrader process per step (each start costs seconds,
    which is most of the difference between meeting the 90 s grading target and not)."""
    from grader.course_dir import Course
    subs = tmp_path / "submissions" / "model_student"
    subs.mkdir(parents=True)
    for name in paths.assignments():
        (subs / f"{name}.ipynb").write_bytes(paths.solution_path(name).read_bytes())
    out = tmp_path / "out"
    runs, run = [], Course.run

    def counted(self, *args, **kw):
        runs.append(" ".join(args[:2]))
        return run(self, *args, **kw)
    monkeypatch.setattr(Course, "run", counted)
    grade.grade(subs.parent, out, progress=False)
    assert runs == ["generate_assignment *", "autograde *", "generate_feedback *"], runs
    assert sorted(p.name for p in (out / "feedback" / "model_student").iterdir()) == [
        f"{name}.html" for name in paths.assignments()]
    with open(out / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["assignment"] for r in rows] == paths.assignments()
    short = [f"{r['assignment']}: {r['score']}/{r['max_score']} {r['status']} {r['detail']}"
             for r in rows if r["status"] != "graded" or float(r["score"]) != float(r["max_score"])]
    assert not short, "\n".join(short)
