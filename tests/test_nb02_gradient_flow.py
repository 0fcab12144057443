"""Notebook 02 (why gates exist: gradient flow).

- The reference code (grader.solution_code.load("02_gradient_flow")) against PyTorch over random
  configurations: autograd for input_gradient_norms and run_in_chunks, clip_grad_norm_ for
  clip_grad_norm, a one-step nn.LSTM for set_forget_bias, and the adding task's rules.
- What the prose claims, on the notebook's own cells and seeds: the decay and explosion figure,
  the latch's flat gradient and its product of forget gates, the bidirectional chunks, the
  truncated gradient, and (slow) the adding problem: a plain RNN fails, a GRU and an LSTM succeed.
- The grade cells against wrong answers: each known mistake fails the grade cell it belongs to,
  with a message that names it, and leaves the exercise's other grade cells passing where the
  mistake does not concern them.
- An nbgrader round trip (slow): an LSTM forget bias set in layer 0 only loses exactly the
  points of the all-layers cell.
"""
import contextlib
import io
import json
import random

import matplotlib
import nbformat
import pytest
import torch
import torch.nn as nn

from grader import paths, solution_code
from grader.course_dir import Course

matplotlib.use("Agg")

NAME = "02_gradient_flow"
HIDDEN = "### BEGIN HIDDEN TESTS"
GRADE_CELLS = {
    "input_gradient_norms": ["test_input_gradient_norms_rnn", "test_input_gradient_norms_gated"],
    "clip_grad_norm": ["test_clip_grad_norm_total", "test_clip_grad_norm_scaling"],
    "set_forget_bias": ["test_set_forget_bias_layer0", "test_set_forget_bias_all"],
    "run_in_chunks": ["test_run_in_chunks_values", "test_run_in_chunks_lstm",
                      "test_run_in_chunks_gradient", "test_run_in_chunks_bidirectional"],
    "make_adding_task": ["test_make_adding_task_shapes", "test_make_adding_task_marks",
                         "test_make_adding_task_seed"],
    "claims": ["test_claims"],
}


@pytest.fixture(scope="module")
def ref():
    return solution_code.load(NAME)


@pytest.fixture(scope="module")
def cells():
    """{grade_id: source} of the solutions notebook."""
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells if "nbgrader" in c.metadata}


@pytest.fixture(autouse=True)
def one_thread():
    """As the notebook's setup cell: tiny models run fastest on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def modules(seed, n=16, lstm_only=False, bidirectional=False):
    """Random recurrent modules (type, sizes, layers, bias, dtype) and matching inputs (T, B, I)."""
    rng = random.Random(seed)
    for _ in range(n):
        kind = nn.LSTM if lstm_only else rng.choice([nn.RNN, nn.GRU, nn.LSTM])
        I, H, L = rng.randint(1, 6), rng.randint(1, 9), rng.randint(1, 3)
        dtype = rng.choice([torch.float32, torch.float64])
        kw = dict(num_layers=L, bias=rng.random() < 0.8 or lstm_only, bidirectional=bidirectional)
        if kind is nn.RNN:
            kw["nonlinearity"] = rng.choice(["tanh", "relu"])
        torch.manual_seed(rng.randint(0, 10 ** 6))
        m = kind(I, H, **kw).to(dtype)
        T, B = rng.randint(1, 25), rng.randint(1, 5)
        yield m, torch.randn(T, B, I, dtype=dtype)


# ----------------------------------------------------------------------------- reference code

def test_input_gradient_norms_equal_autograd(ref):
    for m, x in modules(1, n=24):
        got = ref["input_gradient_norms"](m, x)
        xx = x.clone().requires_grad_(True)
        m(xx)[0][-1].sum().backward()
        want = torch.stack([xx.grad[t].norm() for t in range(x.shape[0])])
        assert got.shape == (x.shape[0],) and got.dtype == x.dtype
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-12), (m, (got - want).abs().max())
        assert not x.requires_grad and x.grad is None, "the caller's x must not change"


def test_clip_grad_norm_equals_torch(ref):
    rng = random.Random(2)
    for trial in range(40):
        shapes = [tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 5))]
        dtype = rng.choice([torch.float32, torch.float64])
        scale, max_norm = 10 ** rng.uniform(-3, 4), 10 ** rng.uniform(-2, 2)
        none = {k for k in range(len(shapes)) if rng.random() < 0.2}
        mine, theirs = [], []
        for k, s in enumerate(shapes):
            g = None if k in none else torch.randn(s, dtype=dtype) * scale
            for group in (mine, theirs):
                p = nn.Parameter(torch.zeros(s, dtype=dtype))
                p.grad = None if g is None else g.clone()
                group.append(p)
        got = ref["clip_grad_norm"](mine, max_norm)
        want = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        assert isinstance(got, torch.Tensor) and got.dim() == 0
        assert torch.allclose(got.to(want.dtype), want, rtol=1e-6), (trial, got, want)
        for a, b in zip(mine, theirs):
            assert (a.grad is None) == (b.grad is None)
            if a.grad is not None:
                assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-12 * max_norm), trial


def test_clip_grad_norm_of_nothing_is_zero(ref):
    assert float(ref["clip_grad_norm"]([nn.Parameter(torch.zeros(3))], 1.0)) == 0.0
    assert float(ref["clip_grad_norm"]([], 1.0)) == 0.0


def test_set_forget_bias_opens_the_forget_gate_of_every_layer_and_direction(ref):
    """Ground truth from behaviour: with zero weights, zero candidate bias and c_0 = 1, one step
    of nn.LSTM leaves c_1 = sigmoid(effective forget bias) in every layer and direction."""
    rng = random.Random(3)
    for bidirectional in (False, True):
        for m, x in modules(3 + bidirectional, n=8, lstm_only=True, bidirectional=bidirectional):
            value = rng.uniform(-4, 4)
            before = {k: v.clone() for k, v in m.state_dict().items()}
            assert ref["set_forget_bias"](m, value) is m
            H = m.hidden_size
            for k, v in m.state_dict().items():
                keep = torch.ones_like(v, dtype=torch.bool)
                if k.startswith("bias"):
                    keep[H:2 * H] = False
                assert torch.equal(v[keep], before[k][keep]), k
            probe = type(m)(m.input_size, H, num_layers=m.num_layers, bidirectional=bidirectional).to(x.dtype)
            probe.load_state_dict(m.state_dict())
            with torch.no_grad():
                for k, p in probe.named_parameters():
                    if k.startswith("weight"):
                        p.zero_()
                    else:
                        p[2 * H:3 * H] = 0.0              # g = tanh(0) = 0: c_1 = f * c_0
                D = 2 if bidirectional else 1
                ones = torch.ones(m.num_layers * D, 1, H, dtype=x.dtype)
                _, (_, c1) = probe(torch.zeros(1, 1, m.input_size, dtype=x.dtype), (0 * ones, ones))
            want = torch.sigmoid(torch.tensor(value, dtype=x.dtype))
            assert torch.allclose(c1, want.expand_as(c1), atol=1e-6), (value, c1.flatten()[:4])


def test_run_in_chunks_equals_one_call_and_truncates_the_gradient(ref):
    rng = random.Random(4)
    run = ref["run_in_chunks"]
    for m, x in modules(5, n=20):
        T = x.shape[0]
        chunk = rng.randint(1, T + 2)
        hx = None
        if rng.random() < 0.5:
            shape = (m.num_layers, x.shape[1], m.hidden_size)
            hx = (torch.randn(shape, dtype=x.dtype), torch.randn(shape, dtype=x.dtype)) if isinstance(m, nn.LSTM) \
                else torch.randn(shape, dtype=x.dtype)
        with torch.no_grad():
            want_out, want_h = m(x, hx)
        xx = x.clone().requires_grad_(True)
        out, h_n = run(m, xx, chunk, hx)
        tol = 1e-5 if x.dtype == torch.float32 else 1e-12
        assert torch.allclose(out.detach(), want_out, atol=tol)
        for a, b in zip(h_n if isinstance(h_n, tuple) else (h_n,), want_h if isinstance(want_h, tuple) else (want_h,)):
            assert torch.allclose(a.detach(), b, atol=tol)
        j = rng.randrange(0, -(-T // chunk))
        lo, hi = j * chunk, min(T, (j + 1) * chunk)
        out[lo:hi].sum().backward()
        assert torch.all(xx.grad[:lo] == 0) and torch.all(xx.grad[hi:] == 0)
        with torch.no_grad():
            state = m(x[:lo], hx)[1] if lo else hx
        xj = x[lo:hi].clone().requires_grad_(True)
        m(xj, state)[0].sum().backward()
        assert torch.allclose(xx.grad[lo:hi], xj.grad, rtol=1e-4, atol=1e-9)


def test_run_in_chunks_refuses_bidirectional_modules(ref):
    for m, x in modules(6, n=6, bidirectional=True):
        with pytest.raises(ValueError):
            ref["run_in_chunks"](m, x, 2)


def test_make_adding_task_follows_its_rules(ref):
    make = ref["make_adding_task"]
    for n, T, seed in [(1, 2, 0), (5, 3, 1), (100, 7, 2), (64, 30, 3), (7, 101, 4), (1000, 10, 5)]:
        state = torch.get_rng_state()
        x, y = make(n, T, seed)
        assert torch.equal(torch.get_rng_state(), state)
        assert x.shape == (T, n, 2) and y.shape == (n,) and x.dtype == y.dtype == torch.float32
        v, m = x[..., 0], x[..., 1]
        assert (v >= 0).all() and (v < 1).all()
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert (m[:T // 2].sum(0) == 1).all() and (m[T // 2:].sum(0) == 1).all()
        assert torch.allclose(y, (v * m).sum(0), atol=1e-6)
        again = make(n, T, seed)
        assert torch.equal(again[0], x) and torch.equal(again[1], y)
        if n * T > 20:
            assert not torch.equal(make(n, T, seed + 1)[0], x)
    x, _ = make(3000, 9, 0)
    assert set(x[..., 1].nonzero()[:, 0].tolist()) == set(range(9))
    assert torch.equal(make(4, 6)[0], make(4, 6, seed=0)[0])


def test_latch_is_notebook_01s():
    """The latch written out again in this notebook holds what notebook 01's reference latch holds."""
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    [cell] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "latch-weights"]
    ns = {"torch": torch}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(cell.source, ns)
    ours, theirs = ns["latch_weights"](), solution_code.load("01_gate_equations")["latch_weights"]()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


# ----------------------------------------------------------------------------- the notebook's claims

def run_cells(*ids, env=None, answers=None):
    """Run the setup cell, the answer cells (or `answers`: {grade_id: source}) and the named code
    cells of the solutions notebook, in notebook order, in one namespace; figures are not shown."""
    nb = json.loads(paths.solution_path(NAME).read_text())
    ns = {"__name__": "nb02"}
    answers = answers or {}
    import os
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            for cell in nb["cells"]:
                meta = cell["metadata"].get("nbgrader", {})
                gid = meta.get("grade_id")
                if cell["cell_type"] != "code" or meta.get("grade"):
                    continue
                if "setup" in cell["metadata"].get("tags", []) or gid in ids or meta.get("solution"):
                    exec(compile(answers.get(gid, "".join(cell["source"])), f"<{gid}>", "exec"), ns)
                    if "setup" in cell["metadata"].get("tags", []):
                        import matplotlib.pyplot as plt
                        ns["plt"].show = lambda *a, **k: plt.close("all")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ns["_stdout"] = out.getvalue()
    return ns


def test_bptt_by_hand_equals_autograd_and_decays():
    ns = run_cells("demo-bptt-by-hand")
    assert ns["worst"] < 1e-5
    ratios = ns["ratios"][:20]
    assert 0.4 < ratios.mean() < 0.7                          # "multiplies the norm by 0.53"
    assert ns["norms"][0] < 1e-6 * ns["norms"][-1]            # "less than a millionth" 29 steps back


def test_figure_decays_explodes_and_stays_flat_as_the_prose_says():
    ns = run_cells("latch-weights", "figure-gradient-vs-distance", "demo-forget-product")
    c = ns["curves"]
    rnn = c["nn.RNN"]
    assert 1e-14 < rnn[-1] / rnn[0] < 1e-10                     # "about 1e-12 of it is left"
    assert 0.5 < float((rnn[-1] / rnn[0]) ** (1 / 59)) < 0.7    # "only about 0.6 per step"
    for name in ("nn.GRU", "nn.LSTM"):
        assert c[name][-1] < 1e-9 * c[name][0], name            # "no better at initialisation"
    boom = c["nn.RNN, W_hh x 4"]
    assert boom[-1] > 1e4 * boom[0]                             # "10^5 times larger"
    latch = c["latch (notebook 01), f = sigmoid(10)"]
    assert latch.max() < 2 * latch.min()                        # flat
    # section 3: the latch's dc_n/dc_0 is the product of its forget gates; init forget gates ~ 0.5
    assert torch.allclose(ns["c0"].grad[0, :, 0], ns["f"].prod(dim=0), rtol=1e-5)
    assert abs(ns["forget"].mean().item() - 0.5) < 0.02


def test_forget_bias_figure_keeps_the_gradient():
    ns = run_cells("latch-weights", "figure-gradient-vs-distance", "figure-forget-bias")
    assert ns["curves"]["nn.LSTM"][-1] < 1e-9
    assert ns["norms"][-1] > 1e-2                                # forget bias 5: alive 59 steps back


def test_bidirectional_chunks_and_truncated_gradient_figure():
    ns = run_cells("latch-weights", "figure-gradient-vs-distance", "demo-bidirectional-chunks",
                   "figure-truncated-gradient")
    full, chunked, H = ns["full"], ns["chunked"], 8
    assert torch.allclose(chunked[..., :H], full[..., :H], atol=1e-6)
    assert (chunked[..., H:] - full[..., H:]).abs().max() > 1e-2
    cut = ns["T"] - ns["chunk"]
    assert torch.all(ns["chunk_grad"][:cut] == 0) and torch.all(ns["full_grad"][:cut] > 0)
    assert torch.allclose(ns["chunk_grad"][cut:], ns["full_grad"][cut:], rtol=1e-4)


def test_training_preview_under_nbgrader_is_small():
    ns = run_cells("adding-support", env={"NBGRADER_EXECUTION": "autograde"})
    assert ns["ADDING"]["steps"] <= 100
    assert ns["adding_task"] is ns["make_adding_task"]


@pytest.mark.slow
def test_adding_problem_rnn_fails_gru_and_lstm_succeed():
    """The notebook's full run, its seeds and configuration: RNN near the trivial 1/6, GRU and LSTM below 0.01."""
    ns = run_cells("adding-support", "train-adding")
    final = {k: v[-1][1] for k, v in ns["results"].items()}
    assert final["RNN"] > 0.12, final
    assert final["GRU"] < 0.01 and final["LSTM"] < 0.01, final
    reached = {k: next(s for s, l in v if l < 0.01) for k, v in ns["results"].items() if k != "RNN"}
    assert max(reached.values()) <= ns["ADDING"]["steps"] // 2, reached   # a margin for other correct data


def test_claims_hold_over_other_configurations(cells):
    """The truths the claims cell grades do not depend on the seed or the sizes."""
    source = cells["test_claims"].split("def _check_claims")[0]
    ns = {"torch": torch, "nn": nn}
    exec(source, ns)
    truth = ns["_claims_truth"]()
    for cfg in [dict(seed=11), dict(seed=12, H=8, B=4, T=40, chunk=10), dict(seed=13, H=64, B=4, T=75, chunk=25)]:
        assert ns["_claims_truth"](**cfg) == truth, cfg
    solved = solution_code.load(NAME)["CLAIMS"]
    assert solved == truth


# ----------------------------------------------------------------------------- grade cells vs mistakes

def answer_source(cells, gid):
    return "\n".join(line for line in cells[gid].splitlines()
                     if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line) + "\n"


def swap(source, old, new):
    assert old in source, f"mutation target not found: {old!r}"
    return source.replace(old, new)


def namespace_with(source=None):
    ns = solution_code.load(NAME, extra_tags=("test-helpers",))
    if source is not None:
        exec(compile(source, "<submission>", "exec"), ns)
    return ns


def run_grade_cell(ns, source, visible_only=False):
    if visible_only:
        source = source.split(HIDDEN)[0]
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, "<grade cell>", "exec"), ns)


IGN = "input_gradient_norms"
CLIP = "clip_grad_norm"
FB = "set_forget_bias"
RIC = "run_in_chunks"
ADD = "make_adding_task"

MUTANTS = {
    # name: (answer cell, edits [(old, new)], grade cell that fails, words its message holds,
    #        grade cells of the same exercise that still pass)
    "norms reversed": (IGN, [("return torch.linalg.vector_norm(grad, dim=(1, 2))",
                              "return torch.linalg.vector_norm(grad, dim=(1, 2)).flip(0)")],
                       "test_input_gradient_norms_rnn", "reverse order", []),
    "norms squared": (IGN, [("return torch.linalg.vector_norm(grad, dim=(1, 2))", "return (grad ** 2).sum(dim=(1, 2))")],
                      "test_input_gradient_norms_rnn", "squared norm", []),
    "loss over all steps": (IGN, [("output[-1].sum()", "output.sum()")],
                            "test_input_gradient_norms_rnn", "over all steps", []),
    "loss on the bottom layer": (IGN, [("output, _ = rnn(x)\n    (grad,) = torch.autograd.grad(output[-1].sum(), x)",
                                        "output, state = rnn(x)\n    h = state[0] if isinstance(state, tuple) else state\n"
                                        "    (grad,) = torch.autograd.grad(h[0].sum(), x)")],
                                 "test_input_gradient_norms_gated", "bottom layer", ["test_input_gradient_norms_rnn"]),
    "loss on c_n": (IGN, [("output, _ = rnn(x)\n    (grad,) = torch.autograd.grad(output[-1].sum(), x)",
                           "output, state = rnn(x)\n    h = state[1] if isinstance(state, tuple) else state\n"
                           "    (grad,) = torch.autograd.grad(h[-1].sum(), x)")],
                    "test_input_gradient_norms_gated", "cell state", ["test_input_gradient_norms_rnn"]),
    "norms in float32": (IGN, [("return torch.linalg.vector_norm(grad, dim=(1, 2))",
                                "return torch.linalg.vector_norm(grad, dim=(1, 2)).float()")],
                         "test_input_gradient_norms_gated", "dtype", ["test_input_gradient_norms_rnn"]),
    "clip returns the norm after": (CLIP, [("    return total\n", "    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))\n")],
                                    "test_clip_grad_norm_total", "after clipping", ["test_clip_grad_norm_scaling"]),
    "clip sums the norms": (CLIP, [("total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))",
                                    "total = torch.stack([torch.linalg.vector_norm(g) for g in grads]).sum()")],
                            "test_clip_grad_norm_total", "sum of the per-tensor norms", []),
    "clip returns a float": (CLIP, [("    return total\n", "    return float(total)\n")],
                             "test_clip_grad_norm_total", "0-dim tensor", ["test_clip_grad_norm_scaling"]),
    "clip never scales": (CLIP, [("            g.mul_(scale)\n", "            g = g * scale\n")],
                          "test_clip_grad_norm_scaling", "it was not changed", ["test_clip_grad_norm_total"]),
    "clip always scales": (CLIP, [("    if total > max_norm:\n", "    if True:\n")],
                           "test_clip_grad_norm_scaling", "nothing should change", ["test_clip_grad_norm_total"]),
    "clip each tensor": (CLIP, [("        scale = max_norm / (total + 1e-6)\n        for g in grads:\n            g.mul_(scale)\n",
                                 "        for g in grads:\n            n = torch.linalg.vector_norm(g)\n"
                                 "            if n > max_norm:\n                g.mul_(max_norm / (n + 1e-6))\n")],
                         "test_clip_grad_norm_scaling", "clipped on its own", ["test_clip_grad_norm_total"]),
    "clip calls torch": (CLIP, [("    grads = [p.grad", "    parameters = list(parameters)\n    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)\n    grads = [p.grad")],
                         "test_clip_grad_norm_total", "written by hand", []),
    "forget bias layer 0 only": (FB, [("for name, p in lstm.named_parameters():", "for name, p in [('bias_ih', lstm.bias_ih_l0), ('bias_hh', lstm.bias_hh_l0)]:")],
                                 "test_set_forget_bias_all", "every layer and direction", ["test_set_forget_bias_layer0"]),
    "forget bias in both": (FB, [("p[H:2 * H] = 0.0", "p[H:2 * H] = value")],
                            "test_set_forget_bias_layer0", "bias_hh's forget rows must be 0", []),
    "forget bias ih only": (FB, [('            elif name.startswith("bias_hh"):\n                p[H:2 * H] = 0.0\n', "")],
                            "test_set_forget_bias_layer0", "bias_hh's forget rows must be 0", []),
    "forget bias input rows": (FB, [("p[H:2 * H] = value", "p[:H] = value"), ("p[H:2 * H] = 0.0", "p[:H] = 0.0")],
                               "test_set_forget_bias_layer0", "only the forget rows", []),
    "forget bias returns None": (FB, [("    return lstm\n", "")],
                                 "test_set_forget_bias_layer0", "return the module", []),
    "chunks without state": (RIC, [("out, state = rnn(x[start:start + chunk], state)", "out, state = rnn(x[start:start + chunk], hx)")],
                             "test_run_in_chunks_values", "pass the state", ["test_run_in_chunks_bidirectional"]),
    "chunks not detached": (RIC, [("        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()\n", "")],
                            "test_run_in_chunks_gradient", "earlier chunks",
                            ["test_run_in_chunks_values", "test_run_in_chunks_lstm", "test_run_in_chunks_bidirectional"]),
    "chunks output detached": (RIC, [("outputs.append(out)", "outputs.append(out.detach())")],
                               "test_run_in_chunks_gradient", "carries no graph",
                               ["test_run_in_chunks_values", "test_run_in_chunks_lstm", "test_run_in_chunks_bidirectional"]),
    "chunks drop the last": (RIC, [("range(0, x.shape[0], chunk)", "range(0, x.shape[0] - chunk + 1, chunk)")],
                             "test_run_in_chunks_lstm", "last, shorter chunk",
                             ["test_run_in_chunks_values", "test_run_in_chunks_bidirectional"]),
    "chunks ignore hx": (RIC, [("outputs, state = [], hx", "outputs, state = [], None")],
                         "test_run_in_chunks_lstm", "start from hx",
                         ["test_run_in_chunks_values", "test_run_in_chunks_gradient", "test_run_in_chunks_bidirectional"]),
    "chunks accept bidirectional": (RIC, [("    if rnn.bidirectional:\n        raise ValueError(", "    if False:\n        raise ValueError(")],
                                    "test_run_in_chunks_bidirectional", "raise ValueError", ["test_run_in_chunks_values"]),
    "chunks TypeError": (RIC, [("raise ValueError(", "raise TypeError(")],
                         "test_run_in_chunks_bidirectional", "not TypeError", ["test_run_in_chunks_values"]),
    "adding global RNG": (ADD, [("    rng = torch.Generator().manual_seed(seed)\n", "    torch.manual_seed(seed)\n    rng = None\n")],
                          "test_make_adding_task_seed", "global random state", ["test_make_adding_task_shapes", "test_make_adding_task_marks"]),
    "adding marks anywhere": (ADD, [("first = torch.randint(0, T // 2,", "first = torch.randint(0, T,")],
                              "test_make_adding_task_marks", "one in each", ["test_make_adding_task_seed"]),
    "adding odd halves": (ADD, [("first = torch.randint(0, T // 2,", "first = torch.randint(0, (T + 1) // 2,"),
                                ("second = torch.randint(T // 2, T,", "second = torch.randint((T + 1) // 2, T,")],
                          "test_make_adding_task_marks", "one in each", ["test_make_adding_task_shapes", "test_make_adding_task_seed"]),
    "adding fixed marks": (ADD, [("first = torch.randint(0, T // 2, (n,), generator=rng)", "first = torch.zeros(n, dtype=torch.long)"),
                                 ("second = torch.randint(T // 2, T, (n,), generator=rng)", "second = torch.full((n,), T // 2)")],
                           "test_make_adding_task_marks", "at random", ["test_make_adding_task_shapes"]),
    "adding sums everything": (ADD, [("y = values[first, seqs] + values[second, seqs]", "y = values.sum(0)")],
                               "test_make_adding_task_shapes", "sum of the two marked values", ["test_make_adding_task_marks"]),
    "adding batch first": (ADD, [("return torch.stack([values, marks], dim=-1), y", "return torch.stack([values, marks], dim=-1).transpose(0, 1), y")],
                           "test_make_adding_task_shapes", "(T, n, 2)", []),
    "adding ignores seed": (ADD, [("manual_seed(seed)", "manual_seed(0)")],
                            "test_make_adding_task_seed", "gave the same x", ["test_make_adding_task_shapes", "test_make_adding_task_marks"]),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_grade_cell_catches_and_names_the_mistake(mutant, cells):
    answer, edits, gid, words, still_pass = MUTANTS[mutant]
    source = answer_source(cells, answer)
    for old, new in edits:
        source = swap(source, old, new)
    ns = namespace_with(source)
    with pytest.raises(AssertionError) as info:
        run_grade_cell(ns, cells[gid], visible_only=True)     # the visible tests catch it already
    assert words in str(info.value), str(info.value)
    for other in still_pass:
        run_grade_cell(namespace_with(source), cells[other])


@pytest.mark.parametrize("claims, words", [
    ("CLAIMS = {**CLAIMS, 'chunked_output_equal': False}", "'chunked_output_equal' (it is True)"),
    ("CLAIMS = {**CLAIMS, 'latch_gradient_flat': None}", "make a prediction"),
    ("CLAIMS = {**CLAIMS, 'latch_gradient_flat': 1}", "True or False"),
    ("CLAIMS = {k: v for k, v in CLAIMS.items() if k != 'clipping_keeps_direction'}", "CLAIMS lacks"),
])
def test_claims_cell_catches_wrong_predictions(claims, words, cells):
    ns = namespace_with(claims)
    with pytest.raises(AssertionError, match=words.replace("(", r"\(").replace(")", r"\)")):
        run_grade_cell(ns, cells["test_claims"])


def test_solution_passes_every_grade_cell(cells, capsys):
    ns = namespace_with()
    for gids in GRADE_CELLS.values():
        for gid in gids:
            run_grade_cell(ns, cells[gid])
    assert capsys.readouterr().err == ""


def test_untouched_stubs_fail_every_grade_cell(cells):
    nb = nbformat.read(paths.student_path(NAME), as_version=4)
    student = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
               if c.metadata.get("nbgrader", {}).get("solution")}
    assert set(student) == set(GRADE_CELLS)
    for answer, gids in GRADE_CELLS.items():
        ns = namespace_with(student[answer])
        if answer == "claims":
            ns["CLAIMS"] = dict.fromkeys(ns["CLAIMS"])
        for gid in gids:
            with pytest.raises((NotImplementedError, AssertionError)):
                run_grade_cell(ns, cells[gid])


def test_helpers_cell_defines_only(cells):
    """The test-helpers cell runs with every exercise unwritten (it calls none of them)."""
    ns = {"torch": torch, "nn": nn}
    exec(cells["test-helpers"], ns)
    assert "_NoBuiltinClip" in ns and "_check_gradient_norms" in ns


# ----------------------------------------------------------------------------- nbgrader round trip

@pytest.mark.slow
def test_nbgrader_takes_only_the_all_layers_points_for_a_layer0_forget_bias(tmp_path, cells):
    nb = nbformat.read(paths.student_path(NAME), as_version=4)
    source = swap(answer_source(cells, FB), "for name, p in lstm.named_parameters():",
                  "for name, p in [('bias_ih', lstm.bias_ih_l0), ('bias_hh', lstm.bias_hh_l0)]:")
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = source if gid == FB else answer_source(cells, gid)
    course = Course(tmp_path / "course")
    course.submit("layer0", NAME, text=nbformat.writes(nb))
    proc = course.autograde(NAME)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = course.scores(NAME, "layer0")
    assert scores["test_set_forget_bias_all"][0] == 0, scores
    lost = {gid: s for gid, s in scores.items() if s[0] != s[1]}
    assert set(lost) == {"test_set_forget_bias_all"}, lost
    assert course.total(NAME, "layer0") == (14, 15)
