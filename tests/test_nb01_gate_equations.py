"""Notebook 01 (LSTM and GRU gate equations).

- The reference code (grader.solution_code.load("01_gate_equations")) against PyTorch over
  random configurations.
- The notebook's _NoBuiltinRNN guard (its test-helpers cell): every route to a built-in
  recurrent kernel is caught (torch.ops.aten.<op> and its overloads, torch._VF, torch.<op>,
  references captured earlier, nn modules), ordinary ops and packing are not; a hand-written
  step that takes any of these routes loses every mark of its exercise.
- The grade cells against wrong answers: each known mistake fails the cells it should, with a
  message that names it, and passes the cells that check other rules (partial credit).
- An nbgrader round trip: a submission that reads the LSTM gates as i, f, o, g loses exactly
  the three lstm_cell_step cells; the solution scores full marks.
"""
import random
import re

import nbformat
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from grader import paths, solution_code
from grader.course_dir import Course

NAME = "01_gate_equations"
HIDDEN = "### BEGIN HIDDEN TESTS"
LSTM_CELLS = ("test_lstm_cell_step", "test_lstm_cell_step_biases", "test_lstm_cell_step_dtype")
GRU_CELLS = ("test_gru_cell_step", "test_gru_cell_step_biases", "test_gru_cell_step_dtype")
LATCH_CELLS = ("test_latch_weights", "test_latch_weights_write", "test_latch_weights_hold")
ALL_CELLS = ("test_lstm_gate_chunks",) + LSTM_CELLS + GRU_CELLS + LATCH_CELLS
EXERCISE_CELLS = {"lstm_gate_chunks": ("test_lstm_gate_chunks",), "lstm_cell_step": LSTM_CELLS,
                  "gru_cell_step": GRU_CELLS, "latch_weights": LATCH_CELLS}


def _notebook():
    return nbformat.read(paths.solution_path(NAME), as_version=4)


@pytest.fixture(scope="module")
def cells():
    """{grade_id: source} of the solutions notebook."""
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in _notebook().cells if "nbgrader" in c.metadata}


def helpers_source():
    [cell] = [c for c in _notebook().cells if "test-helpers" in c.metadata.get("tags", [])]
    return cell.source


@pytest.fixture(scope="module")
def ref():
    return solution_code.load(NAME)


@pytest.fixture(scope="module")
def guard():
    """The _NoBuiltinRNN class of the notebook's test-helpers cell."""
    ns = solution_code.load(NAME)
    exec(compile(helpers_source(), "<test helpers>", "exec"), ns)
    return ns["_NoBuiltinRNN"]


def configs(seed, n=24):
    rng = random.Random(seed)
    for _ in range(n):
        yield (rng.choice([1, 2, 5, 16]), rng.randint(1, 12), rng.randint(1, 20),
               rng.random() < 0.7, rng.choice([torch.float32, torch.float64]))


def close(a, b, dtype):
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)
    return torch.allclose(a, b, **tol)


# ----------------------------------------------------------------------------- reference code

def test_gate_chunks_follow_pytorch_rows(ref):
    torch.manual_seed(0)
    for shape in [(4,), (8, 3), (20, 5), (64, 16), (12, 2, 3)]:
        t = torch.randn(shape)
        got = ref["lstm_gate_chunks"](t)
        assert len(got) == 4
        for a, b in zip(got, t.chunk(4, dim=0)):
            assert torch.equal(a, b)


def test_gate_chunks_reproduce_lstmcell(ref):
    """Ground truth from behaviour: gates assembled block by block give nn.LSTMCell's output."""
    torch.manual_seed(1)
    chunks = ref["lstm_gate_chunks"]
    m = nn.LSTMCell(6, 5).double()
    x, h, c = torch.randn(3, 6).double(), torch.randn(3, 5).double(), torch.randn(3, 5).double()
    wi, wh, bi, bh = (chunks(p.detach()) for p in (m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh))
    pre = [x @ wi[k].T + bi[k] + h @ wh[k].T + bh[k] for k in range(4)]
    c_next = torch.sigmoid(pre[1]) * c + torch.sigmoid(pre[0]) * torch.tanh(pre[2])
    h_next = torch.sigmoid(pre[3]) * torch.tanh(c_next)
    with torch.no_grad():
        h_ref, c_ref = m(x, (h, c))
    assert torch.allclose(c_next, c_ref, atol=1e-12) and torch.allclose(h_next, h_ref, atol=1e-12)


def test_lstm_cell_step_equals_lstmcell(ref, guard):
    torch.manual_seed(2)
    step = ref["lstm_cell_step"]
    for B, I, H, bias, dtype in configs(2):
        m = nn.LSTMCell(I, H, bias=bias).to(dtype)
        x, h, c = torch.randn(B, I, dtype=dtype), torch.randn(B, H, dtype=dtype), torch.randn(B, H, dtype=dtype)
        with torch.no_grad(), guard() as g:
            got = step(x, h, c, m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)
        assert not g.used
        with torch.no_grad():
            want = m(x, (h, c))
        for a, w in zip(got, want):
            assert a.shape == (B, H) and a.dtype == dtype
            assert close(a, w, dtype), (B, I, H, bias, dtype, (a - w).abs().max().item())


def test_lstm_cell_step_gradients_equal_lstmcell(ref):
    torch.manual_seed(3)
    m = nn.LSTMCell(4, 3).double()
    x, h, c = (torch.randn(2, n, dtype=torch.float64, requires_grad=True) for n in (4, 3, 3))
    h1, c1 = ref["lstm_cell_step"](x, h, c, m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)
    mine = torch.autograd.grad((h1.sum() + 2 * c1.sum()), [x, h, c, *m.parameters()])
    h2, c2 = m(x, (h, c))
    theirs = torch.autograd.grad((h2.sum() + 2 * c2.sum()), [x, h, c, *m.parameters()])
    for a, b in zip(mine, theirs):
        assert torch.allclose(a, b, atol=1e-12)


def test_gru_cell_step_equals_grucell(ref, guard):
    torch.manual_seed(4)
    step = ref["gru_cell_step"]
    for B, I, H, bias, dtype in configs(4):
        m = nn.GRUCell(I, H, bias=bias).to(dtype)
        if bias:
            with torch.no_grad():
                m.bias_hh[2 * H:] *= 5          # make b_hn's place matter
        x, h = torch.randn(B, I, dtype=dtype), torch.randn(B, H, dtype=dtype)
        with torch.no_grad(), guard() as g:
            got = step(x, h, m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)
        assert not g.used
        with torch.no_grad():
            want = m(x, h)
        assert got.shape == (B, H) and got.dtype == dtype
        assert close(got, want, dtype), (B, I, H, bias, dtype, (got - want).abs().max().item())


def latch_inputs(n, flags, T=20, fill=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(T, n, generator=g) * 2 - 1 if fill is None else torch.full((T, n), float(fill))
    k = torch.as_tensor(flags).expand(n) if not isinstance(flags, torch.Tensor) else flags
    v[k, torch.arange(n)] = torch.rand(n, generator=g) * 2 - 1
    x = torch.stack([v, torch.zeros(T, n)], dim=-1)
    x[k, torch.arange(n), 1] = 1.0
    return x, torch.tanh(v[k, torch.arange(n)])


def test_latch_weights_store_the_flagged_value(ref):
    weights = ref["latch_weights"]()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "weight_ih_l0": (4, 2), "weight_hh_l0": (4, 1), "bias_ih_l0": (4,), "bias_hh_l0": (4,)}
    lstm = nn.LSTM(2, 1)
    lstm.load_state_dict(weights, strict=True)
    worst = 0.0
    cases = [(200, k, None) for k in range(20)] + [(50, k, f) for k in (0, 19) for f in (1.0, -1.0)]
    cases.append((2000, torch.randint(0, 20, (2000,), generator=torch.Generator().manual_seed(5)), None))
    for seed, (n, flags, fill) in enumerate(cases):
        x, want = latch_inputs(n, flags, fill=fill, seed=seed)
        with torch.no_grad():
            _, (_, c_n) = lstm(x)
        worst = max(worst, (c_n[0, :, 0] - want).abs().max().item())
    assert worst < 1e-2
    assert worst < 2e-3, f"the reference latch should have a wide margin, worst error {worst:.1e}"


def test_hand_step_on_latch_follows_nn_lstm(ref):
    """The notebook's latch figure runs lstm_cell_step; its trajectory must be nn.LSTM's."""
    weights = ref["latch_weights"]()
    lstm = nn.LSTM(2, 1)
    lstm.load_state_dict(weights, strict=True)
    x, _ = latch_inputs(7, torch.tensor([0, 3, 6, 9, 12, 15, 19]), seed=9)
    with torch.no_grad():
        out, (h_n, c_n) = lstm(x)
    h, c = torch.zeros(7, 1), torch.zeros(7, 1)
    for t, x_t in enumerate(x):
        h, c = ref["lstm_cell_step"](x_t, h, c, *weights.values())
        assert torch.allclose(h, out[t], atol=1e-6)
    assert torch.allclose(c, c_n[0], atol=1e-6)


# ----------------------------------------------------------------------------- the guard, route by route

torch.manual_seed(0)
_M, _G = nn.LSTMCell(3, 4), nn.GRUCell(3, 4)
_X, _H0, _C0 = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
_LP = (_M.weight_ih, _M.weight_hh, _M.bias_ih, _M.bias_hh)
_GP = (_G.weight_ih, _G.weight_hh, _G.bias_ih, _G.bias_hh)
_CAPTURED = {"aten": torch.ops.aten.lstm_cell.default, "vf": torch._VF.lstm_cell,
             "torch": torch.lstm_cell, "gru_aten": torch.ops.aten.gru_cell.default}

ROUTES = {
    "aten.lstm_cell.default": lambda: torch.ops.aten.lstm_cell.default(_X, [_H0, _C0], *_LP),
    "aten.lstm_cell (packet)": lambda: torch.ops.aten.lstm_cell(_X, [_H0, _C0], *_LP),
    "aten.lstm.input": lambda: torch.ops.aten.lstm.input(_X[None], [_H0[None], _C0[None]], list(_LP),
                                                         True, 1, 0.0, False, False, False),
    "aten._thnn_fused_lstm_cell": lambda: torch.ops.aten._thnn_fused_lstm_cell(
        _X @ _M.weight_ih.T, _H0 @ _M.weight_hh.T, _C0),
    "torch._VF.lstm_cell": lambda: torch._VF.lstm_cell(_X, (_H0, _C0), *_LP),
    "torch.lstm_cell": lambda: torch.lstm_cell(_X, (_H0, _C0), *_LP),
    "captured aten.lstm_cell.default": lambda: _CAPTURED["aten"](_X, [_H0, _C0], *_LP),
    "captured torch._VF.lstm_cell": lambda: _CAPTURED["vf"](_X, (_H0, _C0), *_LP),
    "captured torch.lstm_cell": lambda: _CAPTURED["torch"](_X, (_H0, _C0), *_LP),
    "nn.LSTMCell": lambda: _M(_X, (_H0, _C0)),
    "nn.LSTM": lambda: nn.LSTM(3, 4)(_X[None]),
    "aten.gru_cell.default": lambda: torch.ops.aten.gru_cell.default(_X, _H0, *_GP),
    "torch._VF.gru_cell": lambda: torch._VF.gru_cell(_X, _H0, *_GP),
    "torch.gru_cell": lambda: torch.gru_cell(_X, _H0, *_GP),
    "captured aten.gru_cell.default": lambda: _CAPTURED["gru_aten"](_X, _H0, *_GP),
    "nn.GRUCell": lambda: _G(_X, _H0),
    "nn.GRU": lambda: nn.GRU(3, 4)(_X[None]),
    "nn.RNNCell": lambda: nn.RNNCell(3, 4)(_X),
    "nn.RNN (relu)": lambda: nn.RNN(3, 4, nonlinearity="relu")(_X[None]),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_guard_catches_every_route(route, guard):
    with guard() as g:
        with pytest.raises(AssertionError, match="calls the built-in"):
            ROUTES[route]()
    assert g.used, route


def test_guard_ignores_ordinary_ops_and_packing(guard):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    with guard() as g:
        packed = pack_padded_sequence(torch.randn(5, 3, 2), torch.tensor([5, 3, 2]))
        pad_packed_sequence(packed)
        pre = F.linear(_X, _M.weight_ih, _M.bias_ih) + torch.addmm(_M.bias_hh, _H0, _M.weight_hh.T)
        i, f, gg, o = pre.chunk(4, dim=1)
        torch.einsum("bi,hi->bh", _X, _M.weight_ih).split(4, dim=1)
        torch.stack([torch.sigmoid(i), torch.tanh(gg)]).sum()
        torch.cat([f, o], dim=1).relu()
    assert not g.used, g.used


# A hand-written step that takes a route to a built-in kernel: numerically right, so only the
# guard can tell. Each must lose every mark of its exercise, with the guard's message.
LSTM_HEAD = "def lstm_cell_step(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None):\n"
GRU_HEAD = "def gru_cell_step(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):\n"
BUILTIN_ANSWERS = {
    "lstm: aten.lstm_cell.default": ("lstm", LSTM_HEAD + (
        "    return tuple(torch.ops.aten.lstm_cell.default(x, [h, c], weight_ih, weight_hh, bias_ih, bias_hh))\n")),
    "lstm: aten.lstm_cell": ("lstm", LSTM_HEAD + (
        "    return tuple(torch.ops.aten.lstm_cell(x, [h, c], weight_ih, weight_hh, bias_ih, bias_hh))\n")),
    "lstm: torch._VF.lstm_cell": ("lstm", LSTM_HEAD + (
        "    return torch._VF.lstm_cell(x, (h, c), weight_ih, weight_hh, bias_ih, bias_hh)\n")),
    "lstm: torch.lstm_cell": ("lstm", LSTM_HEAD + (
        "    return torch.lstm_cell(x, (h, c), weight_ih, weight_hh, bias_ih, bias_hh)\n")),
    "lstm: captured at import": ("lstm", "_kernel = torch.ops.aten.lstm_cell.default\n\n" + LSTM_HEAD + (
        "    return tuple(_kernel(x, [h, c], weight_ih, weight_hh, bias_ih, bias_hh))\n")),
    "lstm: captured torch._VF": ("lstm", "from torch import _VF as _vf\n_fn = _vf.lstm_cell\n\n" + LSTM_HEAD + (
        "    return _fn(x, (h, c), weight_ih, weight_hh, bias_ih, bias_hh)\n")),
    "lstm: nn.LSTMCell": ("lstm", LSTM_HEAD + (
        "    cell = nn.LSTMCell(x.shape[1], h.shape[1]).to(x.dtype)\n"
        "    with torch.no_grad():\n"
        "        cell.weight_ih.copy_(weight_ih)\n"
        "        cell.weight_hh.copy_(weight_hh)\n"
        "        cell.bias_ih.copy_(bias_ih if bias_ih is not None else torch.zeros_like(cell.bias_ih))\n"
        "        cell.bias_hh.copy_(bias_hh if bias_hh is not None else torch.zeros_like(cell.bias_hh))\n"
        "    return cell(x, (h, c))\n")),
    "lstm: nn.LSTM": ("lstm", LSTM_HEAD + (
        "    H = h.shape[1]\n"
        "    zero = torch.zeros(4 * H, dtype=x.dtype)\n"
        "    lstm = nn.LSTM(x.shape[1], H).to(x.dtype)\n"
        "    lstm.load_state_dict({'weight_ih_l0': weight_ih.detach(), 'weight_hh_l0': weight_hh.detach(),\n"
        "                          'bias_ih_l0': zero if bias_ih is None else bias_ih.detach(),\n"
        "                          'bias_hh_l0': zero if bias_hh is None else bias_hh.detach()})\n"
        "    _, (h_n, c_n) = lstm(x[None], (h[None], c[None]))\n"
        "    return h_n[0], c_n[0]\n")),
    "gru: aten.gru_cell.default": ("gru", GRU_HEAD + (
        "    return torch.ops.aten.gru_cell.default(x, h, weight_ih, weight_hh, bias_ih, bias_hh)\n")),
    "gru: torch._VF.gru_cell": ("gru", GRU_HEAD + (
        "    return torch._VF.gru_cell(x, h, weight_ih, weight_hh, bias_ih, bias_hh)\n")),
    "gru: torch.gru_cell": ("gru", GRU_HEAD + (
        "    return torch.gru_cell(x, h, weight_ih, weight_hh, bias_ih, bias_hh)\n")),
    "gru: captured at import": ("gru", "_kernel = torch.ops.aten.gru_cell\n\n" + GRU_HEAD + (
        "    return _kernel(x, h, weight_ih, weight_hh, bias_ih, bias_hh)\n")),
    "gru: nn.GRUCell": ("gru", GRU_HEAD + (
        "    cell = nn.GRUCell(x.shape[1], h.shape[1]).to(x.dtype)\n"
        "    with torch.no_grad():\n"
        "        cell.weight_ih.copy_(weight_ih)\n"
        "        cell.weight_hh.copy_(weight_hh)\n"
        "        cell.bias_ih.copy_(bias_ih if bias_ih is not None else torch.zeros_like(cell.bias_ih))\n"
        "        cell.bias_hh.copy_(bias_hh if bias_hh is not None else torch.zeros_like(cell.bias_hh))\n"
        "    return cell(x, h)\n")),
    "gru: nn.GRU": ("gru", GRU_HEAD + (
        "    H = h.shape[1]\n"
        "    zero = torch.zeros(3 * H, dtype=x.dtype)\n"
        "    gru = nn.GRU(x.shape[1], H).to(x.dtype)\n"
        "    gru.load_state_dict({'weight_ih_l0': weight_ih.detach(), 'weight_hh_l0': weight_hh.detach(),\n"
        "                         'bias_ih_l0': zero if bias_ih is None else bias_ih.detach(),\n"
        "                         'bias_hh_l0': zero if bias_hh is None else bias_hh.detach()})\n"
        "    return gru(x[None], h[None])[1][0]\n")),
}


@pytest.mark.parametrize("answer", sorted(BUILTIN_ANSWERS))
def test_builtin_route_is_right_but_loses_every_mark(answer, cells):
    kind, source = BUILTIN_ANSWERS[answer]
    ns = namespace_with(source)
    # Numerically right (outside the guard): only the guard can tell.
    torch.manual_seed(5)
    if kind == "lstm":
        m = nn.LSTMCell(3, 4).double()
        x, h, c = torch.randn(2, 3).double(), torch.randn(2, 4).double(), torch.randn(2, 4).double()
        for drop in ((), ("bias_ih",)):
            biases = [None if n in drop else getattr(m, n) for n in ("bias_ih", "bias_hh")]
            got = ns["lstm_cell_step"](x, h, c, m.weight_ih, m.weight_hh, *biases)
            with torch.no_grad():
                ref = ns["_variant"](m, drop=drop)(x, (h, c)) if drop else m(x, (h, c))
            assert all(torch.allclose(a.detach(), b, atol=1e-10) for a, b in zip(got, ref)), answer
    else:
        m = nn.GRUCell(3, 4).double()
        x, h = torch.randn(2, 3).double(), torch.randn(2, 4).double()
        got = ns["gru_cell_step"](x, h, m.weight_ih, m.weight_hh, m.bias_ih, None)
        with torch.no_grad():
            ref = ns["_variant"](m, drop=("bias_hh",))(x, h)
        assert torch.allclose(got.detach(), ref, atol=1e-10), answer
    for gid in (LSTM_CELLS if kind == "lstm" else GRU_CELLS):
        with pytest.raises(AssertionError, match="calls the built-in"):
            run_grade_cell(namespace_with(source), cells[gid], visible_only=True)
        with pytest.raises(AssertionError, match="calls the built-in"):
            run_grade_cell(namespace_with(source), cells[gid])


# ----------------------------------------------------------------------------- grade cells vs mistakes

def solution_source(cells, gid):
    return "\n".join(line for line in cells[gid].splitlines() if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


def swap(source, old, new):
    assert old in source, f"mutation target not found: {old!r}"
    return source.replace(old, new)


def ifog(cells):
    """lstm_cell_step that reads the gate blocks as i, f, o, g (CS231n / fastbook order)."""
    src = solution_source(cells, "lstm_cell_step")
    src = swap(src, "g = torch.tanh(pre[:, 2 * H:3 * H])", "g = torch.tanh(pre[:, 3 * H:4 * H])")
    return swap(src, "o = torch.sigmoid(pre[:, 3 * H:4 * H])", "o = torch.sigmoid(pre[:, 2 * H:3 * H])")


MUTANTS = {
    # name: (answer cell, how to build the wrong source, cells that must fail, words the message
    #        must hold (None: any); the other cells of the same exercise must still pass)
    "chunks ifog": ("lstm_gate_chunks",
                    lambda s: swap(s, "t[2 * H:3 * H], t[3 * H:4 * H]", "t[3 * H:4 * H], t[2 * H:3 * H]"),
                    ("test_lstm_gate_chunks",), "PyTorch's order is i, f, g, o"),
    "chunks along the last dimension": ("lstm_gate_chunks",
                                        lambda s: swap(s, "H = t.shape[0] // 4\n    return t[:H], t[H:2 * H], t[2 * H:3 * H], t[3 * H:4 * H]",
                                                       "return t.chunk(4, dim=-1)"),
                                        ("test_lstm_gate_chunks",), "four tensors"),
    "lstm ifog": ("lstm_cell_step", None, LSTM_CELLS, "check the order i, f, g, o"),
    "lstm one bias": ("lstm_cell_step", lambda s: swap(s, "pre = pre + bias_hh", "pass"),
                      ("test_lstm_cell_step", "test_lstm_cell_step_biases", "test_lstm_cell_step_dtype"),
                      "bias_hh is missing"),
    "lstm returns (c, h)": ("lstm_cell_step",
                            lambda s: swap(s, "return h_next, c_next", "return c_next, h_next"),
                            LSTM_CELLS, "you return (c_next, h_next)"),
    "lstm no tanh": ("lstm_cell_step",
                     lambda s: swap(s, "h_next = o * torch.tanh(c_next)", "h_next = o * c_next"),
                     LSTM_CELLS, "c_next is right"),
    "lstm old c in h": ("lstm_cell_step",
                        lambda s: swap(s, "h_next = o * torch.tanh(c_next)", "h_next = o * torch.tanh(c)"),
                        LSTM_CELLS, "h_next differs from nn.LSTMCell"),
    "lstm no None check": ("lstm_cell_step",
                           lambda s: swap(swap(s, "if bias_ih is not None:", "if True:"),
                                          "if bias_hh is not None:", "if True:"),
                           ("test_lstm_cell_step_biases",), None),
    "lstm in place": ("lstm_cell_step",
                      lambda s: swap(s, "c_next = f * c + i * g", "c_next = c.mul_(f).add_(i * g)"),
                      ("test_lstm_cell_step_dtype",), "changed its argument number 3 in place"),
    "lstm float32 inside": ("lstm_cell_step",
                            lambda s: swap(s, "pre = x @ weight_ih.T + h @ weight_hh.T",
                                           "pre = torch.zeros(x.shape[0], 4 * H)\n    pre += x @ weight_ih.T + h @ weight_hh.T"),
                            ("test_lstm_cell_step_dtype",), "float32 rounding"),
    "gru b_hn outside": ("gru_cell_step",
                         lambda s: swap(s, "n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])",
                                        "b_hn = 0 if bias_hh is None else bias_hh[2 * H:]\n"
                                        "    n = torch.tanh(gi[:, 2 * H:] + b_hn + r * (gh[:, 2 * H:] - b_hn))"),
                         GRU_CELLS, "b_hn sits inside r * (W_hn h + b_hn)"),
    "gru z flipped": ("gru_cell_step",
                      lambda s: swap(s, "return (1 - z) * n + z * h", "return z * n + (1 - z) * h"),
                      GRU_CELLS, "z and 1 - z are swapped"),
    "gru z r n": ("gru_cell_step",
                  lambda s: swap(swap(s, "r = torch.sigmoid(gi[:, :H] + gh[:, :H])", "r = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])"),
                                 "z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])", "z = torch.sigmoid(gi[:, :H] + gh[:, :H])"),
                  GRU_CELLS, "PyTorch's order is r, z, n"),
    "gru paper form": ("gru_cell_step",
                       lambda s: swap(s, "n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])",
                                      "n = torch.tanh(gi[:, 2 * H:] + (r * h) @ weight_hh[2 * H:].T + (0 if bias_hh is None else bias_hh[2 * H:]))"),
                       GRU_CELLS, "differs from nn.GRUCell"),
    "gru no None check": ("gru_cell_step",
                          lambda s: swap(s, "if bias_hh is not None:", "if True:"),
                          ("test_gru_cell_step_biases",), None),
    "gru in place": ("gru_cell_step",
                     lambda s: swap(s, "return (1 - z) * n + z * h", "return h.mul_(z).add_((1 - z) * n)"),
                     ("test_gru_cell_step_dtype",), "changed its argument number 2 in place"),
    "latch leaks": ("latch_weights", lambda s: swap(s, "s = 10.0", "s = 2.5"),
                    ("test_latch_weights_write", "test_latch_weights_hold"), "c_n misses tanh(value at the flag)"),
    "latch always writes": ("latch_weights",
                            lambda s: swap(s, "[0.0, 2 * s],       # i", "[0.0, 0.0],         # i").replace(
                                "bias_ih = torch.tensor([-s, s", "bias_ih = torch.tensor([s, -s"),
                            ("test_latch_weights_hold",), "c_n follows the LAST value"),
    "latch never writes": ("latch_weights",
                           lambda s: swap(s, "[0.0, 2 * s],       # i", "[0.0, 0.0],         # i"),
                           ("test_latch_weights_write", "test_latch_weights_hold"), "c_n misses tanh"),
    "latch g without tanh weight": ("latch_weights",
                                    lambda s: swap(s, "[1.0, 0.0],         # g", "[0.5, 0.0],         # g"),
                                    ("test_latch_weights_write", "test_latch_weights_hold"), "c_n misses tanh"),
    "latch wrong keys": ("latch_weights",
                         lambda s: swap(s, '"bias_hh_l0": torch.zeros(4)', '"bias_hh": torch.zeros(4)'),
                         LATCH_CELLS, "the keys should be"),
    "latch integer tensors": ("latch_weights",
                              lambda s: swap(s, '"weight_hh_l0": torch.zeros(4, 1)', '"weight_hh_l0": torch.zeros(4, 1, dtype=torch.long)'),
                              LATCH_CELLS, "should be a float tensor"),
}


def run_grade_cell(ns, source, visible_only=False):
    if visible_only:
        source = source.split(HIDDEN)[0]
    exec(compile(source, "<grade cell>", "exec"), ns)


def namespace_with(fn_source=None):
    """Reference definitions, the test-helpers cell, then (optionally) a replacement answer."""
    ns = solution_code.load(NAME)
    exec(compile(helpers_source(), "<test helpers>", "exec"), ns)
    if fn_source is not None:
        exec(compile(fn_source, "<submission>", "exec"), ns)
    return ns


def test_grade_cells_are_the_expected_ones(cells):
    nb = _notebook()
    graded = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert tuple(graded) == ALL_CELLS
    assert sum(c.metadata["nbgrader"]["points"] for c in nb.cells if c.metadata["nbgrader"].get("grade")) == 10


def test_solution_passes_every_grade_cell(cells, capsys):
    ns = namespace_with()
    for gid in ALL_CELLS:
        run_grade_cell(ns, cells[gid])
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.count("(visible tests)") == len(ALL_CELLS)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_grade_cells_catch_the_mistake_and_keep_other_marks(mutant, cells):
    fn, build, failing, words = MUTANTS[mutant]
    source = ifog(cells) if build is None else build(solution_source(cells, fn))
    for gid in EXERCISE_CELLS[fn]:
        ns = namespace_with(source)
        if gid in failing:
            with pytest.raises(Exception) as info:
                run_grade_cell(ns, cells[gid])
            if words is not None:
                assert words in str(info.value), (gid, str(info.value))
        else:
            run_grade_cell(ns, cells[gid])


def test_visible_tests_alone_catch_every_mutant(cells):
    """Visible coverage: a mistake that hidden tests grade is already caught by a visible test."""
    for name, (fn, build, failing, _) in MUTANTS.items():
        source = ifog(cells) if build is None else build(solution_source(cells, fn))
        for gid in failing:
            with pytest.raises(Exception):
                run_grade_cell(namespace_with(source), cells[gid], visible_only=True)


def test_untouched_stubs_fail_every_grade_cell(cells):
    stub = "def {}(*args, **kwargs):\n    raise NotImplementedError()\n"
    for fn, gids in EXERCISE_CELLS.items():
        for gid in gids:
            with pytest.raises(NotImplementedError):
                run_grade_cell(namespace_with(stub.format(fn)), cells[gid])


# ----------------------------------------------------------------------------- nbgrader round trip

def submission(answers):
    """The student notebook with answer cells (found by grade_id) replaced by `answers`."""
    nb = nbformat.read(paths.student_path(NAME), as_version=4)
    found = set()
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
            found.add(gid)
    assert found == set(answers), f"answer cells not found: {set(answers) - found}"
    return nbformat.writes(nb)


@pytest.mark.slow
def test_nbgrader_gives_ifog_gate_order_less_than_full_marks(tmp_path, cells):
    answers = {gid: solution_source(cells, gid)
               for gid in ("lstm_gate_chunks", "lstm_cell_step", "gru_cell_step", "latch_weights")}
    course = Course(tmp_path / "course")
    course.submit("solution", NAME, paths.solution_path(NAME))
    course.submit("ifog", NAME, text=submission({**answers, "lstm_cell_step": ifog(cells)}))
    proc = course.autograde(NAME)
    assert proc.returncode == 0, proc.stderr[-3000:]

    score, max_score = course.total(NAME, "solution")
    assert max_score == 10 and score == max_score, course.scores(NAME, "solution")
    scores = course.scores(NAME, "ifog")
    for gid in ALL_CELLS:
        want = 0 if gid in LSTM_CELLS else scores[gid][1]
        assert scores[gid][0] == want, (gid, scores)
    assert course.total(NAME, "ifog")[0] == max_score - 3

    graded = nbformat.read(course.autograded_notebook("ifog", NAME), as_version=4)
    [cell] = [c for c in graded.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_lstm_cell_step"]
    message = "".join(o.get("evalue", "") for o in cell.outputs if o.output_type == "error")
    assert re.search(r"differs from nn\.LSTMCell by .* at batch row \d", message), message
    assert "check the order i, f, g, o" in message, message
