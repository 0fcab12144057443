"""The grader against a determined student: every claim of GRADING_SECURITY.md, attacked.

All attacks are built from the CURRENT notebooks (01 and 03; the solution or the untouched
student copy, plus the attack) and graded in ONE batch with `--jobs 2`, as the suite's user
(root in CI, so the sandbox's user ids and cgroups are in play). Each submission must earn
exactly its honest score: an attack on an untouched copy 0, an attack appended to a solution
full marks. Other checks: root-owned canaries keep mode and content, no feedback shows another
student's secret, a hidden test's code or a protected file, the submissions folder is
byte-identical afterwards, and honest students graded beside the attackers keep full marks.
"""
import csv
import importlib.util
import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from grader import grade, kernel_launcher, paths, submissions

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("corpus", ROOT / "tests" / "fixtures" / "corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

A, B = "01_gate_equations", "03_counting_parameters"
RUN = secrets.token_hex(4)


def _sol(name=A):
    return nbformat.read(paths.solution_path(name), as_version=4)


def _stu(name=A):
    return nbformat.read(paths.student_path(name), as_version=4)


def _answers(nb):
    return corpus.answer_cells(nb)


def _functions():
    """Names of the answer functions of notebook A (from the solution)."""
    return [n for c in _answers(_sol()) for n in corpus.functions_in(c.source)]


def _with_cell(nb, source, where="end"):
    cell = nbformat.v4.new_code_cell(source)
    if where == "end":
        nb.cells.append(cell)
    else:
        nb.cells.insert(where, cell)
    return nb


def _replace_answers(nb, body):
    """Every answer function of A defined as `def name(*a, **k): <body>`."""
    for cell in _answers(nb):
        names = corpus.functions_in(_sol_source(cell))
        cell.source = "\n".join(f"def {n}(*a, **k):\n" + "\n".join(
            "    " + line for line in body.splitlines()) for n in names) or cell.source
    return nb


def _sol_source(cell):
    gid = cell.metadata["nbgrader"]["grade_id"]
    return next(c.source for c in _answers(_sol()) if c.metadata["nbgrader"]["grade_id"] == gid)


# ------------------------------------------------------------------ the attacks

# A student object that claims torch.Tensor as a base and answers torch's comparisons itself
# (red team, F1): no LSTM or GRU step is written anywhere.
FORGE = r"""
import sys, types, torch
class _Yes:
    def __call__(self, func, types=(), args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("isfinite", "isnan", "isclose", "eq", "ne", "ge", "le", "lt", "gt"):
            return torch.tensor(True)
        return True
class _ClaimsTensor(type):
    @property
    def __mro__(cls):
        return (cls, torch.Tensor, object)
class _Plain:
    def __init__(self):
        self.__torch_function__ = _Yes()
class _Fake(metaclass=_ClaimsTensor):
    __torch_dispatch__ = None
    __torch_function__ = None
    def __init__(self, shape, dtype):
        self.shape, self.dtype = torch.Size(shape), dtype
        self.__torch_function__ = _Yes()
    def detach(self):
        return _Plain()
    def is_floating_point(self):
        return self.dtype.is_floating_point
def lstm_gate_chunks(t):
    n = t.shape[0] // 4
    return tuple(_Fake((n,) + tuple(t.shape[1:]), t.dtype) for _ in range(4))
def lstm_cell_step(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    return _Fake(h.shape, h.dtype), _Fake(h.shape, h.dtype)
def gru_cell_step(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    return _Fake(h.shape, h.dtype)
"""


def _forged():
    nb = _stu()
    for cell in _answers(nb):
        if "latch" not in cell.metadata["nbgrader"]["grade_id"]:
            cell.source = FORGE
    return nb


# A class whose fake base made the judge's C code read through the bridge (red team, F7).
SEGV = """
import torch
class _ClaimsTensor(type):
    @property
    def __mro__(cls):
        return (cls, torch.Tensor, object)
class lstm_gate_chunks(metaclass=_ClaimsTensor):
    pass
"""

def _segv():
    nb = _stu()
    for cell in _answers(nb):
        if cell.metadata["nbgrader"]["grade_id"] == "lstm_gate_chunks":
            cell.source = SEGV
    return nb


# Exceptions named like the grader's own, raised in the student's own cells (red team, F10).
SPOOF = ["class CellTimeoutError(Exception): pass\nraise CellTimeoutError('not really')",
         "class GradingError(Exception): pass\nraise GradingError('not really')"]


PATCH_EVERYTHING = corpus.CHEAT

ATTACKS_ZERO = {
    # nbgrader scores a grade cell from its first displayed value: make every statement display one
    "interactivity": lambda: _with_cell(_stu(), "%config InteractiveShell.ast_node_interactivity = 'all'", 3),
    # ... or display one from inside the answer
    "displayhook": lambda: _replace_answers(_stu(), "get_ipython().displayhook(10.0)\nreturn None"),
    # answer functions that patch the checks when the test calls them
    "repatch_on_call": lambda: _replace_answers(
        _stu(), "import builtins, torch\n" + PATCH_EVERYTHING.replace("_Yes().__enter__()", "") + "\nreturn None"),
    # an audit hook and a thread that re-patch after anything the grader restores
    "audit_and_thread": lambda: _with_cell(_replace_answers(_stu(), "return None"), """
import sys, threading, time, torch, builtins
def _patch(*a):
    torch.allclose = lambda *a, **k: True
    torch.equal = lambda *a, **k: True
    builtins.all = lambda *a, **k: True
sys.addaudithook(lambda ev, args: _patch())
def _loop():
    while True:
        _patch(); time.sleep(0.001)
threading.Thread(target=_loop, daemon=True).start()
""", 4),
    # no statement may raise: compile everything inside a try
    "codeop": lambda: _with_cell(_replace_answers(_stu(), "return None"), """
import codeop, IPython
_orig = codeop.compile
def _safe(source, *a, **k):
    return _orig("try:\\n" + "\\n".join("    " + l for l in source.splitlines()) + "\\nexcept BaseException:\\n    pass\\n", *a, **k)
codeop.compile = _safe
get_ipython().compile = lambda *a, **k: _safe(*a, **k)
""", 4),
    # errors vanish from the kernel's messages, every reply says ok
    "session_send": lambda: _with_cell(_replace_answers(_stu(), "return None"), """
_k = get_ipython().kernel
_send = _k.session.send
def _filtered(stream, msg_or_type, content=None, *a, **k):
    t = msg_or_type if isinstance(msg_or_type, str) else msg_or_type.get("msg_type")
    if t == "error":
        return None
    if isinstance(content, dict) and content.get("status") == "error":
        content = {"status": "ok", "execution_count": content.get("execution_count", 0),
                   "user_expressions": {}, "payload": []}
    return _send(stream, msg_or_type, content, *a, **k)
_k.session.send = _filtered
""", 4),
    # the grader's bridge replaced: every request answered "ok, True"
    "bridge_forged": lambda: _with_cell(_replace_answers(_stu(), "return None"), """
import builtins, io, base64, torch
from IPython.display import publish_display_data
def _forged(req):
    buf = io.BytesIO(); torch.save(("ok", ("bool", True), {}), buf)
    publish_display_data({"application/x-grader-reply": base64.b64encode(buf.getvalue()).decode()})
for _k in [k for k in dir(builtins) if k.startswith("_grader")]:
    setattr(builtins, _k, _forged)
""", 4),
    # a reply that would run code in the judge
    "bridge_pickle": lambda: _with_cell(_replace_answers(_stu(), "return None"), """
import builtins, base64, pickle, os
from IPython.display import publish_display_data
class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ATTACK_PICKLE_RAN",))
def _evil(req):
    publish_display_data({"application/x-grader-reply": base64.b64encode(pickle.dumps(("ok", _Boom(), {}))).decode()})
for _k in [k for k in dir(builtins) if k.startswith("_grader")]:
    setattr(builtins, _k, _evil)
""", 4),
    # values that lie about themselves
    "lying_values": lambda: _with_cell(_replace_answers(_stu(), "return _lie(a, k)"), """
import torch
class _Liar(torch.Tensor):
    def allclose(self, *a, **k): return True
    def equal(self, *a, **k): return True
    def __eq__(self, o): return torch.ones(self.shape, dtype=torch.bool)
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("allclose", "equal", "isclose", "eq"):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})
class _Int(int):
    def __eq__(self, o): return True
    __hash__ = int.__hash__
class _Dict(dict):
    def __eq__(self, o): return True
    def __getitem__(self, k): return torch.zeros(4, 2).as_subclass(_Liar)
def _lie(a, k):
    t = torch.zeros(3, 5).as_subclass(_Liar)
    return _Dict(weight_ih_l0=t) if not a else (t, t)
""", 4),
    # a replaced __builtins__ global, and patched isinstance/all
    "builtins_replaced": lambda: _with_cell(_replace_answers(_stu(), "return None"), """
import builtins
builtins.isinstance = lambda *a: True
builtins.all = lambda *a: True
builtins.abs = lambda x: 0
__builtins__ = {"print": print, "__import__": __import__}
""", 4),
}

# Both walk the whole file system the sandbox shows, within a time budget (a loaded machine must
# not turn the walk itself into a timeout), skipping only /proc, /sys, /dev, the system folders
# and Python's own, read-only copies of the host's that hold no student's files.
WALK = r'''
import os, sys, time
def _walk(match, budget=25):
    stop, found = time.monotonic() + budget, []
    skip = {"/proc", "/sys", "/dev", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
            os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    for top, dirs, files in os.walk("/"):
        if time.monotonic() > stop:
            found.append("(walk stopped: time budget)")
            break
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
        found += [os.path.join(top, f) for f in files if match(f)]
    return found
'''

SNOOP = WALK + r'''
import json
own = os.path.dirname(([a for a in sys.argv if a.endswith(".json")] or ["/nowhere/x"])[0])
found = {"ipynb": [p for p in _walk(lambda f: f.endswith((".ipynb", ".db", ".html", ".json")))
                   if not p.startswith(own)][:40],
         "env": sorted(os.environ)}
found["proc"] = sorted(p for p in os.listdir("/proc") if p.isdigit())
for pid in found["proc"]:
    try:
        found.setdefault("cmdline", []).append(open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:200])
    except OSError:
        pass
print("SNOOP:", json.dumps(found))
'''

INJECT = WALK + r'''
import json
own = os.path.dirname(([a for a in sys.argv if a.endswith(".json")] or ["/nowhere/x"])[0])
hits = [p for p in _walk(lambda f: f == "connection.json" or (f.startswith("kernel-") and f.endswith(".json")))
        if not p.startswith(own)]
try:
    import jupyter_client
    for conn in hits:
        if conn.endswith(".json"):
            c = jupyter_client.BlockingKernelClient(connection_file=conn)
            c.load_connection_file(); c.start_channels()
            c.execute("import builtins; builtins.all = lambda *a: False; import torch; torch.allclose = lambda *a, **k: False")
except Exception as e:
    hits.append(type(e).__name__)
print("INJECT:", json.dumps(hits))
'''


def _symlinks(canaries):
    targets = ", ".join(repr(str(c)) for c in canaries)
    return f'''
import os, sys, glob
targets = [{targets}]
places = [os.getcwd(), os.path.expanduser("~"), "/tmp", "/dev/shm"]
conn = [a for a in sys.argv if a.endswith(".json")]
if conn:
    places.append(os.path.dirname(conn[0]))
made = 0
for d in places:
    for i, t in enumerate(targets):
        for name in ("01_gate_equations.ipynb", f"link{{i}}", "connection.json", "gradebook.db",
                     "01_gate_equations.html", "timestamp.txt"):
            p = os.path.join(d, name)
            try:
                if os.path.lexists(p):
                    os.remove(p)
                os.symlink(t, p)
                made += 1
            except OSError:
                pass
print("SYMLINKS:", made)
'''


RESOURCES = {
    "many_files": '''
import os
os.makedirs("flood", exist_ok=True)
n = 0
for i in range(20000):
    try:
        open(f"flood/{i}", "w").close(); n += 1
    except OSError:
        break
print("FILES:", n)
''',
    "stdout_flood": '''
import sys, os
for _ in range(256):
    sys.stdout.write("x" * (1 << 20))
os.write(1, b"y" * (64 << 20))
print()
''',
    "shm": f'''
import os
try:
    with open("/dev/shm/ATTACK_SHM_{RUN}", "wb") as f:
        for _ in range(400):
            f.write(b"z" * (1 << 20))
    print("SHM: filled")
except OSError as e:
    print("SHM: refused", type(e).__name__)
''',
    "many_outputs": '''
from IPython.display import display, HTML
for i in range(4000):
    display(HTML("<b>" + "w" * 10000 + "</b>"))
''',
}

FORK_MEMORY = '''
import os, time
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        try:
            b = bytearray(2_000_000_000)
            for i in range(0, len(b), 4096):
                b[i] = 1
            time.sleep(5)
        finally:
            os._exit(0)
    kids.append(pid)
for k in kids:
    os.waitpid(k, 0)
import mmap
m = mmap.mmap(-1, 4_000_000_000, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
for i in range(0, len(m), 4096):
    m[i] = 1
print("MEMORY: all touched")
'''


def _moved(nb):
    """The first answer cell moved below its grade cell(s)."""
    first = _answers(nb)[0]
    i = nb.cells.index(first)
    j = i + 1
    while j < len(nb.cells) and not corpus._meta(nb.cells[j]).get("grade"):
        j += 1
    while j + 1 < len(nb.cells) and corpus._meta(nb.cells[j + 1]).get("grade"):
        j += 1
    cell = nb.cells.pop(i)
    nb.cells.insert(j, cell)
    return nb


def _copied(nb):
    cell = _answers(nb)[1]
    nb.cells.insert(nb.cells.index(cell), nbformat.from_dict(dict(cell)))
    return nb


def _split(nb):
    cell = _answers(nb)[1]
    half = nbformat.from_dict(dict(cell))
    half.source = "import math as _m_split\n_helper_split = lambda x: x\n"
    nb.cells.insert(nb.cells.index(cell), half)
    return nb


def _secret_in(nb, student):
    token = f"SECRET-{student}-{RUN}"
    _answers(nb)[0].source += f"\n# {token}\n"
    return nb, token


# ------------------------------------------------------------------ building the batch

def build(root, canaries):
    sol = _sol()
    full = corpus.max_score(sol)
    full_b = corpus.max_score(_sol(B))
    exp, secrets_of = {}, {}

    def put(student, nb, score, status="graded", name=A, folder=None):
        path = root / (folder or student) / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(nbformat.writes(nb) if not isinstance(nb, (bytes, str)) else
                        (nb.decode() if isinstance(nb, bytes) else nb))
        exp[(student, name)] = (score, status)

    for student, make in ATTACKS_ZERO.items():
        put(student, make(), 0)
    # Honest students graded beside the attackers, each with a secret nobody else may read.
    for student in ("honest1", "honest2", "honest3"):
        nb, secrets_of[student] = _secret_in(_sol(), student)
        put(student, nb, full)
    put("forge", _forged(), 0)
    put("segv", _segv(), 0)
    put("spoof_status", _with_cell(_with_cell(_sol(), SPOOF[0]), SPOOF[1]), full)
    put("snoop", _with_cell(_sol(), SNOOP), full)
    put("inject", _with_cell(_sol(), INJECT), full)
    put("symlinks", _with_cell(_sol(), _symlinks(canaries)), full)
    for student, code in RESOURCES.items():
        put(student, _with_cell(_sol(), code), full)
    if os.geteuid() == 0:
        put("fork_memory", _with_cell(_sol(), FORK_MEMORY), full)
    # Bad files cost their own row: the same student's other notebook is graded.
    put("deep", ("[" * 5000 + "]" * 5000), 0, "unreadable")
    put("deep", _sol(B), full_b, name=B)
    # Honest editing grades like the same answers unedited.
    put("moved", _moved(_sol()), full)
    put("copied", _copied(_sol()), full)
    put("split", _split(_sol()), full)
    put("nbformat3", nbformat.writes(nbformat.convert(_sol(), 3)), full)
    # LMS shapes: names that sanitise alike, a formula, one name twice in Canvas, a resubmission.
    nb, secrets_of["Jane Doe"] = _secret_in(_sol(), "Jane Doe")
    put("Jane Doe", nb, full)
    put("Jane_Doe", _stu(), 0)
    put("=HYPERLINK(\"x\")", _stu(), 0, folder="=HYPERLINK(\"x\")")
    flat_old = root / f"doejane_111_901_{A}.ipynb"
    flat_old.write_text(nbformat.writes(_sol()))
    (root / f"doejane_222_902_{A}.ipynb").write_text(nbformat.writes(_stu()))
    exp[("doejane_111", A)] = (full, "graded")
    exp[("doejane_222", A)] = (0, "graded")
    (root / "resubmitted").mkdir()
    old = root / "resubmitted" / f"{A}.ipynb"
    old.write_text(nbformat.writes(_stu()))
    new = root / "resubmitted" / f"{A} (1).ipynb"
    new.write_text(nbformat.writes(_sol()))
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    exp[("resubmitted", A)] = (full, "graded")
    return exp, secrets_of


def _hidden_lines():
    lines = set()
    for name in (A, B):
        for cell in _sol(name).cells:
            for _, body in corpus_blocks(cell.source):
                for line in body.strip().splitlines():
                    line = line.strip()
                    if len(line) >= 40 and not line.startswith("#"):
                        lines.add(line)
    return lines


def corpus_blocks(source):
    import re
    return re.findall(r"### BEGIN (HIDDEN TESTS)(.*?)### END HIDDEN TESTS", source, re.S)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    subs, out = tmp / "submissions", tmp / "out"
    subs.mkdir()
    canaries = []
    for i in range(2):
        c = tmp / f"canary{i}"
        c.write_text(f"CANARY-{RUN}-{i}")
        c.chmod(0o600)
        canaries.append(c)
    before_canaries = [(c.stat().st_mode, c.read_text()) for c in canaries]
    expected, secrets_of = build(subs, canaries)
    before = corpus.tree_digest(subs)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "grader", "grade", str(subs), "--out", str(out), "--jobs", "2",
         "--timeout", "90", "--assignments", "01", "03", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=3600)
    took = time.monotonic() - started
    with open(out / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    students = {s.name: s for s in submissions.discover(subs, [A, B], {})[0]}
    return dict(proc=proc, rows=rows, expected=expected, secrets=secrets_of, subs=subs, out=out,
                before=before, canaries=canaries, before_canaries=before_canaries, took=took,
                folders={n: s.folder for n, s in students.items()})


def visible_text(page):
    """What a reader of the HTML sees: tags (syntax highlighting splits code into spans) gone."""
    import html
    import re
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _feedback(batch, student, name=A):
    path = batch["out"] / "feedback" / batch["folders"][student] / f"{name}.html"
    return visible_text(path.read_text()) if path.exists() else ""


@pytest.mark.slow
def test_the_batch_finishes_and_changes_no_submission(batch):
    assert batch["proc"].returncode == 0, batch["proc"].stderr[-3000:]
    assert "Traceback" not in batch["proc"].stderr, batch["proc"].stderr[-3000:]
    assert corpus.tree_digest(batch["subs"]) == batch["before"]


@pytest.mark.slow
def test_no_attack_earns_a_mark_and_no_honest_student_loses_one(batch):
    got = {(r["student"], r["assignment"]): (float(r["score"]), r["status"], r["detail"])
           for r in batch["rows"]}
    wrong = []
    for key, (score, status) in batch["expected"].items():
        g = got.get((grade.spreadsheet_safe(key[0]), key[1]))
        if g is None or abs(g[0] - score) > 1e-9 or g[1] != status:
            wrong.append(f"{key}: got {g}, want {score} {status}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_canaries_survive(batch):
    after = [(c.stat().st_mode, c.read_text()) for c in batch["canaries"]]
    assert after == batch["before_canaries"]
    for c in batch["canaries"]:
        assert stat.S_IMODE(c.stat().st_mode) == 0o600 and c.stat().st_uid == os.geteuid()
    assert not Path("/tmp/ATTACK_PICKLE_RAN").exists()
    assert not Path(f"/dev/shm/ATTACK_SHM_{RUN}").exists(), "a sandbox wrote the host's /dev/shm"


@pytest.mark.slow
def test_nothing_leaks_into_feedback(batch):
    hidden = _hidden_lines()
    assert hidden, "no hidden-test lines to look for"
    canary_texts = [t for _, t in batch["before_canaries"]]
    for html in (batch["out"] / "feedback").rglob("*.html"):
        text = visible_text(html.read_text())
        owner = html.parent.name
        for student, token in batch["secrets"].items():
            if batch["folders"][student] != owner:
                assert token not in text, f"{html}: another student's secret"
        for c in canary_texts:
            assert c not in text, f"{html}: a protected file's content"
        leaked = [line for line in hidden if line in text]
        assert not leaked, f"{html}: hidden test code {leaked[:2]}"


@pytest.mark.slow
def test_students_cannot_reach_each_other(batch):
    snoop = _feedback(batch, "snoop")
    assert "SNOOP:" in snoop
    line = snoop[snoop.index("SNOOP:"):].split("\n")[0]
    for bad in ("gradebook.db", "submissions", "/out/", "solutions", "honest", "connection.json",
                "GRADER_", "course-grade-"):
        assert bad not in line, f"the sandbox shows {bad!r}: {line[:500]}"
    inject = _feedback(batch, "inject")
    assert "INJECT: []" in inject, inject[inject.find("INJECT"):][:300]


@pytest.mark.slow
def test_resource_attacks_are_contained(batch):
    assert "FILES:" in _feedback(batch, "many_files")
    assert len(_feedback(batch, "stdout_flood")) < 3_000_000
    assert len(_feedback(batch, "many_outputs")) < 4_000_000
    assert "SHM: refused" in _feedback(batch, "shm")


def test_attack_notebooks_are_built_from_the_current_course():
    """Fast: every attack builds, and the answer functions it replaces exist."""
    assert _functions(), "notebook 01 has no answer functions"
    for make in ATTACKS_ZERO.values():
        nb = make()
        nbformat.validate(nb)
    assert kernel_launcher.python_dirs()
