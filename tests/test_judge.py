"""The judge's bridge does what CONTRIBUTING.md promises test authors ("Grade cells run in the
grader's judge"): one synthetic notebook, each grade cell checking one promise, run through
JudgedExecute (a plain kernel; the sandbox is tests/test_attacks.py's business)."""
import nbformat
import pytest

from grader import authoring
from grader.judged_execute import JudgedExecute

ANSWER = '''
import torch
from torch import nn

def add_one(x):
    return x + 1

def scale_grads(params, factor):
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)

def zero_forget(lstm):
    with torch.no_grad():
        lstm.bias_hh_l0[lstm.hidden_size:2 * lstm.hidden_size] = 0
    return lstm

def noisy(n):
    return torch.randn(n)

def rigged(n):
    out = torch.randn(n)
    torch.manual_seed(0)                # tries to choose what the test draws next
    return out

def sneaky_zero(lstm, x):
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
    return x.sum()

def zero_input(x):
    x.zero_()
    return x.sum()

def clip_by_torch(params):
    return torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=False)

def picky(x):
    if x < 0:
        raise ValueError("x must not be negative")
    return x

def builtin_step(x, h, c, w_ih, w_hh):
    return torch.ops.aten.lstm_cell.default(x, [h, c], w_ih, w_hh)

class Doubler(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.full((n,), 2.0))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.w * x

CONSTANTS = {"pi": 3.0, "names": ["a", "b"]}
'''

TESTS = {
    "values": '''"""values and containers come back as copies of plain types."""
_y = add_one(torch.tensor([1.0, 2.0]))
assert type(_y) is torch.Tensor and _y.tolist() == [2.0, 3.0], _y
assert add_one(1) == 2 and type(add_one(1)) is int
assert CONSTANTS == {"pi": 3.0, "names": ["a", "b"]}
print("values: ok")''',
    "autograd": '''"""loss.backward() reaches the test's inputs and a student object's parameters."""
_x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
_m = Doubler(3)
_out = _m(_x)
_out.sum().backward()
assert _x.grad.tolist() == [2.0, 2.0, 2.0], _x.grad
assert _m.w.grad.tolist() == [1.0, -2.0, 3.0], _m.w.grad
assert isinstance(_m, Doubler) and isinstance(_m, nn.Module) and _m.calls == 1
assert _m.train() is _m and _m.training
print("autograd: ok")''',
    "copy_back": '''"""in-place changes by an _IN_PLACE function to the test's modules and .grad come back;
returning the argument gives the test's own object."""
_l = nn.LSTM(2, 3)
for _p in _l.parameters():
    _p.grad = torch.ones_like(_p)
scale_grads(list(_l.parameters()), 0.5)
assert all(bool((_p.grad == 0.5).all()) for _p in _l.parameters())
assert zero_forget(_l) is _l and float(_l.bias_hh_l0[3:6].detach().abs().sum()) == 0.0
print("copy_back: ok")''',
    "copies": '''"""any other call works on copies: the test's module stays as it was, and a call that
changes a tensor it was given fails, saying so."""
_l = nn.LSTM(2, 3)
_before = {k: v.clone() for k, v in _l.state_dict().items()}
sneaky_zero(_l, torch.ones(2))
assert all(torch.equal(_before[k], v) for k, v in _l.state_dict().items())
try:
    zero_input(torch.ones(3))
except AssertionError as _e:
    assert "in place" in str(_e), _e
else:
    raise AssertionError("a changed argument went unnoticed")
print("copies: ok")''',
    "rng": '''"""the test's random state travels with each call; what the test draws next is its own;
a call that draws nothing leaves it as it was."""
torch.manual_seed(7)
_a = noisy(3)
_b = noisy(3)
torch.manual_seed(7)
assert torch.equal(torch.randn(3), _a) and not torch.equal(_a, _b)
torch.manual_seed(5)
rigged(2)
_next = torch.randn(4)
torch.manual_seed(0)
assert not torch.equal(_next, torch.randn(4)), "the student chose the test's next random numbers"
_s = torch.get_rng_state()
add_one(torch.ones(2))
assert torch.equal(torch.get_rng_state(), _s), "a call that draws nothing moved the test's random state"
print("rng: ok")''',
    "exceptions": '''"""a student's exception arrives as the same built-in type with its message."""
try:
    picky(-1)
except ValueError as _e:
    assert "negative" in str(_e)
else:
    raise AssertionError("no ValueError")
print("exceptions: ok")''',
    "guard": '''"""the no-built-in-kernel rule is carried into the student's process, even when the call
raises inside the block."""
_cell = nn.LSTMCell(2, 3)
_x, _h = torch.randn(1, 2), torch.randn(1, 3)
with _NoBuiltinRNN() as _g:
    try:
        builtin_step(_x, _h, _h, _cell.weight_ih, _cell.weight_hh)
    except AssertionError:
        pass
assert _g.used == {"lstm_cell"}, _g.used
print("guard: ok")''',
    "guard_sources": '''"""a guard's FORBIDDEN_SOURCES (torch files the student's code must not run) travel too."""
_p = [nn.Parameter(torch.ones(3))]
_p[0].grad = torch.full((3,), 10.0)
with _NoClip() as _g:
    try:
        clip_by_torch(_p)
    except AssertionError:
        pass
assert _g.used, "clip_grad_norm_ ran unnoticed"
print("guard_sources: ok")''',
}

HELPERS = '''
import os as _os
import re as _re
import sys as _sys
from torch.overrides import TorchFunctionMode as _TFM

_IN_PLACE = {"scale_grads", "zero_forget"}

class _NoClip(_TFM):
    FORBIDDEN = _re.compile(r"^_foreach_")
    FORBIDDEN_SOURCES = (_os.path.join("torch", "nn", "utils", "clip_grad.py"),)
    def __init__(self):
        super().__init__()
        self.used = set()
    def __torch_function__(self, func, types, args=(), kwargs=None):
        _f = _sys._getframe(1)
        while _f is not None:
            if _f.f_code.co_filename.endswith(self.FORBIDDEN_SOURCES):
                self.used.add("clip_grad")
                raise AssertionError("built-in clip_grad")
            _f = _f.f_back
        return func(*args, **(kwargs or {}))

class _NoBuiltinRNN(_TFM):
    FORBIDDEN = _re.compile(r"(^|_)(lstm|gru|rnn)(_|$)")
    def __init__(self):
        super().__init__()
        self.used = set()
    def __torch_function__(self, func, types, args=(), kwargs=None):
        base = (getattr(func, "__name__", "") or "").split(".")[0]
        if self.FORBIDDEN.search(base):
            self.used.add(base)
            raise AssertionError(f"built-in {base}")
        return func(*args, **(kwargs or {}))
'''


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judge")
    cells = [authoring.md("# Judge"), authoring.setup("import torch\nfrom torch import nn\ntorch.manual_seed(0)"),
             authoring.helpers(HELPERS), authoring.solution(ANSWER, "answers")]
    cells += [authoring.tests(src, f"test_{name}", points=1) for name, src in TESTS.items()]
    nb = nbformat.v4.new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i}"
    source = tmp / "source.ipynb"
    nbformat.write(nb, source)
    ep = JudgedExecute(timeout=120, source_notebook=str(source), kernel_name="python3")
    out, _ = ep.preprocess(nbformat.read(source, as_version=4), {"metadata": {"path": str(tmp)}})
    return {c.metadata["nbgrader"]["grade_id"]: c.outputs for c in out.cells
            if c.metadata.get("nbgrader", {}).get("grade")}


@pytest.mark.parametrize("name", list(TESTS))
def test_the_bridge_keeps_its_promise(judged, name):
    outputs = judged[f"test_{name}"]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert text == f"{name}: ok\n", text


def test_the_grader_never_connects_again_by_path(tmp_path):
    """The kernel owns its socket files: after the first connection, neither a reconnect nor
    the heartbeat (which reopens its socket when a beat is missed) may follow a path again."""
    import zmq
    ep = JudgedExecute(timeout=60, kernel_name="python3")
    ep.nb, ep.resources = nbformat.v4.new_notebook(), {"metadata": {"path": str(tmp_path)}}
    with ep.setup_kernel():
        assert ep.km.context.getsockopt(zmq.RECONNECT_IVL) == -1
        assert not ep.kc.hb_channel.is_alive()
