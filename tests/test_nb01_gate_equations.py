"""Notebook 01 (LSTM and GRU gate equations).

- The reference code (grader.solution_code.load("01_gate_equations")) against PyTorch over random configurations.
- The grade cells against wrong answers: each known mistake fails, with a message that names it,
  and a step that calls a built-in kernel passes the visible tests but not the hidden ones.
- An nbgrader round trip: a submission that reads the LSTM gates as i, f, o, g scores less than
  full marks, the solution full marks.
"""
import random
import re

import nbformat
import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from grader import paths, solution_code
from grader.course_dir import Course

NAME = "01_gate_equations"
HIDDEN = "### BEGIN HIDDEN TESTS"


class NoBuiltinRNN(TorchFunctionMode):
    FORBIDDEN = {"lstm", "lstm_cell", "gru", "gru_cell", "rnn_tanh", "rnn_relu",
                 "rnn_tanh_cell", "rnn_relu_cell", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.FORBIDDEN:
            raise AssertionError(f"built-in {func.__name__} called")
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def ref():
    return solution_code.load("01_gate_equations")


@pytest.fixture(scope="module")
def cells():
    """{grade_id: source} of the solutions notebook."""
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells if "nbgrader" in c.metadata}


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


def test_lstm_cell_step_equals_lstmcell(ref):
    torch.manual_seed(2)
    step = ref["lstm_cell_step"]
    for B, I, H, bias, dtype in configs(2):
        m = nn.LSTMCell(I, H, bias=bias).to(dtype)
        x, h, c = torch.randn(B, I, dtype=dtype), torch.randn(B, H, dtype=dtype), torch.randn(B, H, dtype=dtype)
        with torch.no_grad(), NoBuiltinRNN():
            got = step(x, h, c, m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)
        with torch.no_grad():
            want = m(x, (h, c))
        for g, w in zip(got, want):
            assert g.shape == (B, H) and g.dtype == dtype
            assert close(g, w, dtype), (B, I, H, bias, dtype, (g - w).abs().max().item())


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


def test_gru_cell_step_equals_grucell(ref):
    torch.manual_seed(4)
    step = ref["gru_cell_step"]
    for B, I, H, bias, dtype in configs(4):
        m = nn.GRUCell(I, H, bias=bias).to(dtype)
        if bias:
            with torch.no_grad():
                m.bias_hh[2 * H:] *= 5          # make b_hn's place matter
        x, h = torch.randn(B, I, dtype=dtype), torch.randn(B, H, dtype=dtype)
        with torch.no_grad(), NoBuiltinRNN():
            got = step(x, h, m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)
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
    # name: (grade cell, function name, how to build the wrong source, words the message must hold)
    "chunks ifog": ("test_lstm_gate_chunks", "lstm_gate_chunks",
                    lambda s: swap(s, "t[2 * H:3 * H], t[3 * H:4 * H]", "t[3 * H:4 * H], t[2 * H:3 * H]"),
                    "PyTorch's order is i, f, g, o"),
    "lstm ifog": ("test_lstm_cell_step", "lstm_cell_step", None, "check the order i, f, g, o"),
    "lstm one bias": ("test_lstm_cell_step", "lstm_cell_step",
                      lambda s: swap(s, "pre = pre + bias_hh", "pass"), "bias_hh is missing"),
    "lstm returns (c, h)": ("test_lstm_cell_step", "lstm_cell_step",
                            lambda s: swap(s, "return h_next, c_next", "return c_next, h_next"),
                            "you return (c_next, h_next)"),
    "lstm no tanh": ("test_lstm_cell_step", "lstm_cell_step",
                     lambda s: swap(s, "h_next = o * torch.tanh(c_next)", "h_next = o * c_next"),
                     "c_next is right"),
    "lstm old c in h": ("test_lstm_cell_step", "lstm_cell_step",
                        lambda s: swap(s, "h_next = o * torch.tanh(c_next)", "h_next = o * torch.tanh(c)"),
                        "h_next differs from nn.LSTMCell"),
    "lstm ignores None bias": ("test_lstm_cell_step", "lstm_cell_step",
                               lambda s: swap(s, "if bias_ih is not None:", "if True:"), None),
    "lstm in place": ("test_lstm_cell_step", "lstm_cell_step",
                      lambda s: swap(s, "c_next = f * c + i * g", "c_next = c.mul_(f).add_(i * g)"),
                      "changed its input c in place"),
    "gru b_hn outside": ("test_gru_cell_step", "gru_cell_step",
                         lambda s: swap(s, "n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])",
                                        "n = torch.tanh(gi[:, 2 * H:] + bias_hh[2 * H:] + r * (gh[:, 2 * H:] - bias_hh[2 * H:]))"),
                         "b_hn sits inside r * (W_hn h + b_hn)"),
    "gru z flipped": ("test_gru_cell_step", "gru_cell_step",
                      lambda s: swap(s, "return (1 - z) * n + z * h", "return z * n + (1 - z) * h"),
                      "z and 1 - z are swapped"),
    "gru z r n": ("test_gru_cell_step", "gru_cell_step",
                  lambda s: swap(swap(s, "r = torch.sigmoid(gi[:, :H] + gh[:, :H])", "r = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])"),
                                 "z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])", "z = torch.sigmoid(gi[:, :H] + gh[:, :H])"),
                  "PyTorch's order is r, z, n"),
    "gru paper form": ("test_gru_cell_step", "gru_cell_step",
                       lambda s: swap(s, "n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])",
                                      "n = torch.tanh(gi[:, 2 * H:] + (r * h) @ weight_hh[2 * H:].T + (0 if bias_hh is None else bias_hh[2 * H:]))"),
                       "differs from nn.GRUCell"),
    "latch leaks": ("test_latch_weights", "latch_weights",
                    lambda s: swap(s, "s = 10.0", "s = 2.5"), "c_n misses tanh(value at the flag)"),
    "latch always writes": ("test_latch_weights", "latch_weights",
                            lambda s: swap(s, "[0.0, 2 * s],       # i", "[0.0, 0.0],         # i").replace(
                                "bias_ih = torch.tensor([-s, s", "bias_ih = torch.tensor([s, -s"),
                            "c_n follows the LAST value"),
    "latch wrong keys": ("test_latch_weights", "latch_weights",
                         lambda s: swap(s, '"bias_hh_l0": torch.zeros(4)', '"bias_hh": torch.zeros(4)'), "the keys should be"),
}


def run_grade_cell(ns, source, visible_only=False):
    if visible_only:
        source = source.split(HIDDEN)[0]
    exec(compile(source, "<grade cell>", "exec"), ns)


def namespace_with(cells, fn_source):
    ns = solution_code.load("01_gate_equations")
    exec(compile(fn_source, "<submission>", "exec"), ns)
    return ns


def test_solution_passes_every_grade_cell(cells, capsys):
    ns = solution_code.load("01_gate_equations")
    for gid in ("test_lstm_gate_chunks", "test_lstm_cell_step", "test_gru_cell_step", "test_latch_weights"):
        run_grade_cell(ns, cells[gid])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_grade_cell_catches_and_names_the_mistake(mutant, cells):
    gid, fn, build, words = MUTANTS[mutant]
    source = ifog(cells) if build is None else build(solution_source(cells, fn))
    ns = namespace_with(cells, source)
    with pytest.raises(Exception) as info:
        run_grade_cell(ns, cells[gid])
    if words is not None:
        assert words in str(info.value), str(info.value)


@pytest.mark.parametrize("gid, fn, call", [
    ("test_lstm_cell_step", "lstm_cell_step",
     "    return torch.lstm_cell(x, (h, c), weight_ih, weight_hh, bias_ih, bias_hh)"),
    ("test_gru_cell_step", "gru_cell_step",
     "    return torch._VF.gru_cell(x, h, weight_ih, weight_hh, bias_ih, bias_hh)"),
])
def test_builtin_kernel_passes_visible_but_fails_hidden_tests(gid, fn, call, cells):
    head = solution_source(cells, fn).split('"""')
    source = '"""'.join(head[:2]) + '"""\n' + call + "\n"
    ns = namespace_with(cells, source)
    run_grade_cell(ns, cells[gid], visible_only=True)
    with pytest.raises(AssertionError, match="calls the built-in"):
        run_grade_cell(ns, cells[gid])


def test_untouched_stubs_fail_every_grade_cell(cells):
    stub = "def {}(*args, **kwargs):\n    raise NotImplementedError()\n"
    for gid, fn in [("test_lstm_gate_chunks", "lstm_gate_chunks"), ("test_lstm_cell_step", "lstm_cell_step"),
                    ("test_gru_cell_step", "gru_cell_step"), ("test_latch_weights", "latch_weights")]:
        ns = namespace_with(cells, stub.format(fn))
        with pytest.raises(NotImplementedError):
            run_grade_cell(ns, cells[gid])


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
    assert scores["test_lstm_cell_step"][0] == 0, scores
    for gid in ("test_lstm_gate_chunks", "test_gru_cell_step", "test_latch_weights"):
        assert scores[gid][0] == scores[gid][1], (gid, scores)
    assert course.total(NAME, "ifog")[0] < max_score

    graded = nbformat.read(course.autograded_notebook("ifog", NAME), as_version=4)
    [cell] = [c for c in graded.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_lstm_cell_step"]
    message = "".join(o.get("evalue", "") for o in cell.outputs if o.output_type == "error")
    assert re.search(r"differs from nn\.LSTMCell by .* at batch row \d", message), message
    assert "check the order i, f, g, o" in message, message
