"""`python -m grader grade`: finding submissions, reading them safely, the judge's bridge, the
sandbox, and the corpus of broken submissions end to end (tests/test_attacks.py: hostile ones).
"""
import csv
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from grader import grade, judge, kernel_launcher, paths, submissions

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("corpus", ROOT / "tests" / "fixtures" / "corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

A = "01_gate_equations"


def _ids(name):
    nb = nbformat.read(paths.solution_path(name), as_version=4)
    return {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}


def _touch(path, text="{}", mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


# ------------------------------------------------------------------ finding submissions (fast)

def test_match_rules(tmp_path):
    names = [A, "03_counting_parameters"]
    ids = {n: _ids(n) for n in names}
    exact = _touch(tmp_path / f"{A}.ipynb")
    similar = _touch(tmp_path / "03-Counting-Parameters (3).ipynb")
    stray = _touch(tmp_path / "notes.txt", "hi")
    found, notes, problems, unmatched = submissions.match_files([exact, similar, stray], names, ids)
    assert found == {A: exact, "03_counting_parameters": similar}
    assert problems == {} and unmatched == [stray]
    assert notes["03_counting_parameters"] == similar.name, "the row says which file was graded"


def test_renamed_notebook_is_found_by_content_and_missing_is_missing(tmp_path):
    untitled = tmp_path / "Untitled.ipynb"
    untitled.write_bytes(paths.solution_path(A).read_bytes())
    found, _, _, _ = submissions.match_files([untitled], [A], {A: _ids(A)})
    assert found == {A: untitled}
    found, _, problems, _ = submissions.match_files([], [A], {A: set()})
    assert problems[A][0] == "missing"


def test_a_resubmission_is_graded_from_the_newest_file_and_says_so(tmp_path):
    old = _touch(tmp_path / f"{A}.ipynb", mtime=1_000_000)
    new = _touch(tmp_path / f"{A} (1).ipynb", mtime=2_000_000)
    found, notes, problems, _ = submissions.match_files([old, new], [A], {A: set()})
    assert found[A] == new and "newest of 2" in notes[A] and old.name in notes[A]
    # Canvas appends -1, -2 to a resubmitted file; same modification time: the later suffix.
    one = _touch(tmp_path / "x" / f"doejane_111_9_{A}-1.ipynb", mtime=3_000_000)
    two = _touch(tmp_path / "x" / f"doejane_111_9_{A}-2.ipynb", mtime=3_000_000)
    found, notes, problems, _ = submissions.match_files([two, one], [A], {A: set()})
    assert found[A] == two and one.name in notes[A] and A not in problems


def test_discover_keeps_students_apart(tmp_path):
    (tmp_path / "Jane Doe_42_assignsubmission_file_" / "sub").mkdir(parents=True)
    _touch(tmp_path / "Jane Doe_42_assignsubmission_file_" / "sub" / f"{A}.ipynb")
    _touch(tmp_path / "Jane Doe" / f"{A}.ipynb")
    _touch(tmp_path / "Jane_Doe" / f"{A}.ipynb")
    _touch(tmp_path / "bob" / ".ipynb_checkpoints" / f"{A}-checkpoint.ipynb")
    _touch(tmp_path / f"smithj_late_123_456_{A}.ipynb")
    _touch(tmp_path / f"doejane_111_901_{A}.ipynb")
    _touch(tmp_path / f"doejane_222_902_{A}.ipynb")
    _touch(tmp_path / "README.txt", "top-level file without a notebook name")
    students, warnings = submissions.discover(tmp_path, [A], {A: set()})
    by_name = {s.name: s for s in students}
    assert set(by_name) == {"Jane Doe_42", "Jane Doe", "Jane_Doe", "bob", "smithj_123",
                            "doejane_111", "doejane_222"}
    assert all(A in by_name[n].found for n in by_name if n != "bob")
    assert by_name["bob"].problems[A][0] == "missing", "checkpoints are never graded"
    folders = [s.folder.lower() for s in students]
    assert len(set(folders)) == len(folders), f"two students share a feedback folder: {folders}"
    assert any("README.txt" in w for w in warnings)


def test_spreadsheet_formulas_are_neutralised(tmp_path):
    rows = [{"student": "=HYPERLINK(\"http://x\")", "assignment": A, "score": 1.0,
             "max_score": 2.0, "status": "graded", "detail": "+1-2"},
            {"student": "@SUM(A1)", "assignment": A, "score": 0, "max_score": 2.0,
             "status": "missing", "detail": "-3"}]
    grade.write_csv(tmp_path / "g.csv", rows, grade.CSV_COLUMNS)
    with open(tmp_path / "g.csv") as f:
        got = list(csv.DictReader(f))
    for r in got:
        for k in ("student", "detail"):
            assert r[k][0] not in "=+-@", r
    assert got[0]["student"] == "'=HYPERLINK(\"http://x\")"


@pytest.mark.parametrize("content, why", [
    (b"", "empty"), (b"  \n", "empty"), (b"{not json", "invalid JSON"), (b"[1, 2]", "without cells"),
    (b"\xff\xfe\x00", "not UTF-8"), (b"[" * 5000 + b"]" * 5000, "nested 5000 levels"),
    (json.dumps({"cells": [{"cell_type": "code", "source": "x", "metadata": {}, "outputs": []}] * 2,
                 "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode(), None),
    # 100,000 cells: refused at once, before nbformat spends minutes validating them
    (json.dumps({"cells": [{"cell_type": "raw", "source": "x", "metadata": {}}] * 100_000,
                 "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode(), "100000 cells"),
])
def test_read_notebook_never_raises(tmp_path, content, why):
    path = tmp_path / "nb.ipynb"
    path.write_bytes(content)
    nb, reason = submissions.read_notebook(path)
    if why is None:
        assert nb is not None and reason is None
    else:
        assert nb is None and why in reason, reason


def test_read_notebook_does_not_follow_links(tmp_path):
    secret = tmp_path / "secret.ipynb"
    secret.write_bytes(paths.solution_path(A).read_bytes())
    link = tmp_path / "link.ipynb"
    link.symlink_to(secret)
    nb, reason = submissions.read_notebook(link)
    assert nb is None and "regular file" in reason


def test_honest_editing_is_cleaned_not_punished(tmp_path):
    """A copied answer cell (JupyterLab keeps nbgrader's metadata), a split cell, an nbformat 3
    file, cells from an older release: all readable, one cell per grade id, stale ids dropped."""
    nb = nbformat.read(paths.solution_path(A), as_version=4)
    answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
    nb.cells.insert(nb.cells.index(answer) + 1, nbformat.from_dict(dict(answer)))
    stale = nbformat.v4.new_code_cell("x = 1")
    stale.metadata["nbgrader"] = {"grade_id": "from-an-older-release", "solution": True,
                                  "grade": False, "locked": False, "schema_version": 3}
    nb.cells.append(stale)
    path = tmp_path / "copied.ipynb"
    nbformat.write(nb, path)
    clean, why = submissions.read_notebook(path, known_ids=_ids(A))
    assert why is None
    gids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in clean.cells]
    gids = [g for g in gids if g]
    assert len(gids) == len(set(gids)) and "from-an-older-release" not in gids
    assert len(clean.cells) == len(nb.cells), "no code is dropped"
    v3 = tmp_path / "v3.ipynb"
    v3.write_text(nbformat.writes(nbformat.convert(nb, 3)))
    clean, why = submissions.read_notebook(v3, known_ids=_ids(A))
    assert why is None and clean.nbformat == 4


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


# ------------------------------------------------------------------ the judge's decoder (fast)

def _reply(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _Liar(torch.Tensor):
    def allclose(self, *a, **k):
        return True


class _AlwaysEqual(int):
    def __eq__(self, other):
        return True


def test_the_judge_reads_only_plain_values():
    decode = judge._Decoder(bridge=None)
    assert decode(("tuple", [("int", 3), ("str", "x"), ("none",)])) == (3, "x", None)
    t = decode(("tensor", torch.ones(2), False, None, None, "cpu", False))
    assert type(t) is torch.Tensor and t.tolist() == [1.0, 1.0]
    for bad in [("int", True), ("int", 3.0), ("bool", 1), ("float", 1), ("str", b"x"),
                ("dict", [(("list", []), ("int", 1))]), ("weird", 1), [("int", 1)], ("int",)]:
        with pytest.raises((judge.BridgeError, ValueError, TypeError)):
            decode(bad)
    deep = ("none",)
    for _ in range(200):
        deep = ("list", [deep])
    with pytest.raises(judge.BridgeError):
        decode(deep)
    # A value shared a billion ways (a "billion laughs" structure) stops at the node limit.
    node = ("int", 1)
    for _ in range(40):
        node = ("list", [node, node])
    with pytest.raises(judge.BridgeError):
        judge._Decoder(bridge=None)(node)


def test_lies_cannot_cross_the_bridge():
    """A tensor subclass, an int that equals everything, a pickle that runs code: refused
    before any test sees them."""
    with pytest.raises(judge.BridgeError):
        judge.read_reply(_reply(("ok", ("tensor", torch.ones(2).as_subclass(_Liar), False, None,
                                        None, "cpu", False), {})))
    with pytest.raises(judge.BridgeError):
        judge.read_reply(_reply(("ok", ("int", _AlwaysEqual(3)), {})))

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch /tmp/GRADER_PWNED_BY_PICKLE",))
    raw = pickle.dumps(("ok", Boom(), {}))
    with pytest.raises(judge.BridgeError):
        judge.read_reply(raw)
    assert not os.path.exists("/tmp/GRADER_PWNED_BY_PICKLE")
    with pytest.raises(judge.BridgeError):
        judge.read_reply(b"\0" * (judge.MAX_REPLY_BYTES + 1))


class _ScriptedStudent:
    """The student's end of a bridge, scripted: a class that claims to derive from torch.Tensor
    and answers every attribute with a callable handle (the red team's forged comparison)."""
    PLAIN = {"name": "Liar", "mro": ["__main__.Liar", "builtins.object"]}

    def __init__(self):
        self.asked = []

    def send(self, header, blob=b""):
        self.req = pickle.loads(blob)
        self.asked.append((self.req.get("op"), self.req.get("name")))

    def recv(self):
        r = self.req
        if r["op"] == "getattr" and r["name"] == "shape":
            v = ("ok", ("size", [3]), {})
        elif r["op"] == "getattr":
            v = ("ok", ("handle", 77, 78, self.PLAIN, True, r["name"]), {})
        else:
            v = ("ok", ("bool", True), {})
        return {"op": "reply", "status": "ok"}, _reply(v)


def test_a_proxy_never_answers_for_torch():
    """A student object that claims torch.Tensor as its base is no tensor in the judge, and a
    comparison torch makes with it is torch's own: it raises instead of asking the student."""
    student = _ScriptedStudent()
    bridge = judge.Bridge(student)
    cls = bridge.student_class(1, {"name": "T", "mro": ["__main__.T", "torch.Tensor", "builtins.object"]})
    fake = judge.RemoteObject(bridge, 5, cls, "fake")
    ref = torch.randn(3)
    assert not isinstance(fake, torch.Tensor)
    assert fake.shape == ref.shape                    # ordinary attributes still come across
    for compare in (torch.allclose, torch.equal, torch.sub):
        with pytest.raises(TypeError):
            compare(fake, ref)
    with pytest.raises(AttributeError):
        fake.__array__
    assert not any(name and name.startswith("__torch") for _, name in student.asked), student.asked


def test_student_exceptions_arrive_as_the_nearest_builtin():
    exc = judge._student_exception({"mro": ["student.MyError", "builtins.ValueError",
                                            "builtins.Exception"], "name": "MyError",
                                    "message": "bad rnn"})
    assert isinstance(exc, ValueError) and type(exc).__name__ == "MyError" and str(exc) == "bad rnn"
    exc = judge._student_exception({"mro": ["builtins.KeyboardInterrupt"], "name": "KeyboardInterrupt",
                                    "message": ""})
    assert isinstance(exc, RuntimeError) and not isinstance(exc, KeyboardInterrupt)


def test_global_reads_finds_student_names_at_any_depth():
    reads, binds = judge.global_reads(
        "import torch\n_x = 1\ndef _h(a):\n    return lstm_cell_step(a) + _x\n"
        "class _C:\n    y = HandLSTM\n_h(model)\n")
    assert {"lstm_cell_step", "HandLSTM", "model", "_x"} <= reads
    assert {"torch", "_x", "_h", "_C"} <= binds


# ------------------------------------------------------------------ the sandbox (fast)

def _sandbox_env():
    opts = grade.Options(timeout=10, wall=60, memory_mb=2048, file_mb=10, network=False, threads=1)
    return grade.worker_env(opts, 0, {})


def test_sandbox_probe_reports_every_limit():
    opts = grade.Options(timeout=10, wall=60, memory_mb=2048, file_mb=10, network=False, threads=1)
    report = grade.probe(opts)
    for key in ("sandbox", "memory", "file size", "user", "cgroup"):
        assert key in report, report
    if kernel_launcher.BWRAP:
        assert report["sandbox"] == "bubblewrap", report


def test_the_sandbox_sees_nothing_of_the_machine(tmp_path):
    if kernel_launcher.can_use_bwrap(os.geteuid() == 0):
        pytest.skip("bubblewrap is not usable here")
    secret = tmp_path / "other_student" / "01_gate_equations.ipynb"
    _touch(secret, "SECRET")
    # The course data is shown even when it lies under /tmp, where the sandbox has its own tmpfs.
    data = tmp_path / "work" / "data" / "MNIST"
    _touch(data / "t10k-labels-idx1-ubyte", "DATA")
    code = ("import os, json; print(json.dumps({'root': sorted(os.listdir('/')), "
            "'pids': sorted(p for p in os.listdir('/proc') if p.isdigit()), "
            f"'secret': os.path.exists({str(secret)!r}), 'solutions': os.path.exists({str(paths.SOLUTIONS)!r}), "
            f"'data': open({str(data / 't10k-labels-idx1-ubyte')!r}).read(), "
            "'uid': os.getuid()}))")
    env = _sandbox_env()
    env["GRADER_QUIET"] = "0"
    cmd = kernel_launcher.bwrap_command([sys.executable, "-c", code], as_root=os.geteuid() == 0,
                                        show=[str(tmp_path / "work" / "data")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not seen["secret"] and not seen["solutions"]
    assert seen["data"] == "DATA"
    assert set(seen["root"]) <= {"bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32",
                                 "proc", "root", "sbin", "tmp", "usr", "work", "opt"} | {
        Path(p).parts[1] for p in kernel_launcher.python_dirs()}
    assert len(seen["pids"]) <= 3, f"other processes are visible: {seen['pids']}"
    if os.geteuid() == 0:
        assert seen["uid"] == int(env["GRADER_UID"])


def test_launcher_will_not_start_a_kernel_as_root(tmp_path):
    """When the grader is root and no sandbox user is set, nothing is started."""
    if os.geteuid() != 0:
        pytest.skip("the grader does not switch users here (not root)")
    env = paths.tool_env()
    env.pop("GRADER_UID", None)
    proc = subprocess.run([sys.executable, str(grade.LAUNCHER), "--kernel", "id"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "refusing" in proc.stderr and "uid=" not in proc.stdout


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
        cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert corpus.tree_digest(subs) == before, "SUBMISSIONS must be byte-identical afterwards"

    with open(out / "grades.csv") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(expected), "one row per student and notebook (the batch finished)"
    full = corpus.max_score(nbformat.read(paths.solution_path(A), as_version=4))
    problems = []
    for student, exp in expected.items():
        r = rows[student]
        got = float(r["score"])
        want = float(rows["wrong"]["score"]) if exp.score == "wrong" else exp.score
        ok_score = got < full if want == "below full" else abs(got - float(want)) < 1e-9
        if not ok_score or r["status"] != exp.status or float(r["max_score"]) != full:
            problems.append(f"{student}: got {got}/{r['max_score']} {r['status']} ({r['detail']}), "
                            f"want {want} {exp.status} ({exp.note})")
    assert not problems, "\n".join(problems)
    folders = {s.name: s.folder for s in submissions.discover(subs, [A], {A: _ids(A)})[0]}
    for student, r in rows.items():
        html = out / "feedback" / folders[student] / f"{A}.html"
        assert html.exists() == (r["status"] in ("graded", "timeout")), student
    assert (out / "feedback" / folders["renamed_loud"] / f"{A}.html").stat().st_size < 3_000_000
    hog = (out / "feedback" / folders["memory_hog"] / f"{A}.html").read_text()
    assert "MEMORY: refused" in hog and "MEMORY: allocated" not in hog
    hostile = (out / "feedback" / folders["hostile"] / f"{A}.html").read_text()
    assert "WROTE OUTSIDE: nothing" in hostile and "NETWORK: blocked" in hostile
    for where in (ROOT, ROOT.parent, Path("/tmp"), Path("/"), tmp_path, subs, out):
        assert not (where / "CORPUS_PWNED").exists(), where


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
PLANT = """
import os, pathlib, site
home = pathlib.Path(os.environ.get("HOME", "~")).expanduser()
for path, code in [
        (home / ".jupyter" / "nbgrader_config.py", "open({marker!r}, 'w').close()"),
        (pathlib.Path(os.environ.get("IPYTHONDIR", home / ".ipython")) / "profile_default" / "startup"
         / "00-planted.py", "import builtins; builtins.PLANTED = 'startup file'"),
        (pathlib.Path(site.getusersitepackages()) / "planted.pth", "import builtins; builtins.PLANTED = 'pth'")]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code + "\\n")
    except OSError:
        pass
"""


def _leftovers():
    proc = subprocess.run(["pgrep", "-f", "sleep 300[12]"], capture_output=True, text=True)
    return proc.stdout.split()


@pytest.mark.slow
def test_one_student_many_notebooks(tmp_path):
    """A student's notebooks are autograded in one nbgrader run; one that runs past the wall-clock
    limit, or that nbgrader cannot grade, costs only its own marks. Nothing a notebook leaves in
    its HOME runs in a later kernel or in the grader; daemons and fork bombs end with the kernel.
    Limits are generous: the test passes on a loaded 2-core machine."""
    a1, a2, a3 = A, "03_counting_parameters", "04_bidirectional_layout"
    sol = {a: nbformat.read(paths.solution_path(a), as_version=4) for a in (a1, a2, a3)}
    marker = tmp_path / "GRADER_RAN_PLANTED_CONFIG"
    planter = nbformat.from_dict(sol[a1])
    planter.cells.append(nbformat.v4.new_code_cell(PLANT.format(marker=str(marker)) + DAEMON))
    checker = nbformat.from_dict(sol[a3])
    checker.cells.append(nbformat.v4.new_code_cell(
        "import builtins, os\nprint('PLANTED:', getattr(builtins, 'PLANTED', 'nothing'))\n"
        "print(f'UID: {os.getuid()}.')\n" + FORK_BOMB))
    slow = nbformat.from_dict(sol[a2])   # every cell under --timeout, the whole over --wall
    for _ in range(4):
        slow.cells.insert(3, nbformat.v4.new_code_cell("import time\ntime.sleep(25)"))
    subs = tmp_path / "submissions"
    for student, nbs in {"mixed": {a1: planter, a2: slow, a3: checker}}.items():
        (subs / student).mkdir(parents=True)
        for a, nb in nbs.items():
            nbformat.write(nb, subs / student / f"{a}.ipynb")
    assert not _leftovers(), "sleep 3001/3002 already running: the check below would be wrong"
    rows, _ = grade.grade(subs, tmp_path / "out", timeout=60, wall=80, progress=False,
                          only=[a1, a2, a3])
    got = {r["assignment"]: (r["score"], r["status"]) for r in rows}
    full = {a: corpus.max_score(sol[a]) for a in sol}
    assert got == {a1: (full[a1], "graded"), a2: (0, "timeout"), a3: (full[a3], "graded")}, rows
    assert "wall-clock" in next(r["detail"] for r in rows if r["assignment"] == a2)
    checked = (tmp_path / "out" / "feedback" / "mixed" / f"{a3}.html").read_text()
    assert "PLANTED: nothing" in checked
    assert not marker.exists(), "nbgrader ran a config file that student code wrote"
    if os.geteuid() == 0:
        assert f"UID: {int(_sandbox_env()['GRADER_UID'])}." in checked, "the kernel is not the sandbox user"
    assert "FORK BOMB: stopped" in checked
    time.sleep(1)
    assert not _leftovers(), "a process started by student code outlived its kernel"


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
    """The sandbox and the judge must not cost a correct submission a point in any notebook
    (notebook 07 reads MNIST and trains in it). A complete submission takes one nbgrader
    process per step in its worker (each start costs seconds)."""
    subs = tmp_path / "submissions" / "model_student"
    subs.mkdir(parents=True)
    for name in paths.assignments():
        (subs / f"{name}.ipynb").write_bytes(paths.solution_path(name).read_bytes())
    out = tmp_path / "out"
    rows, cells = grade.grade(subs.parent, out, progress=False)
    assert sorted(p.name for p in (out / "feedback" / "model_student").iterdir()) == [
        f"{name}.html" for name in paths.assignments()]
    assert [r["assignment"] for r in rows] == paths.assignments()
    short = [f"{r['assignment']}: {r['score']}/{r['max_score']} {r['status']} {r['detail']}"
             for r in rows if r["status"] != "graded" or float(r["score"]) != float(r["max_score"])]
    assert not short, "\n".join(short)
    with open(out / "cells.csv") as f:
        per_cell = list(csv.DictReader(f))
    assert len(per_cell) == len(cells) and all(float(c["score"]) == float(c["max_score"])
                                               for c in per_cell)
