"""Notebook 05 (the GRU): the reference code against real nn.GRU / nn.GRUCell modules over random
configurations, the claims against the modules they name, and the grade cells against plausible
wrong answers (each must fail with the message a student needs). Pure pytest, no nbgrader."""
import ast
import random

import nbformat
import pytest
import torch
import torch.nn as nn

from grader import paths, solution_code

NAME = "05_gru"
GRADE_IDS = ("test_gru_latch_weights_format", "test_gru_latch_weights_holds", "test_update_gate",
             "test_generate", "test_generate_batch_first", "test_generate_bidirectional",
             "test_my_claims")


@pytest.fixture(scope="module")
def ref():
    return solution_code.load(NAME)


def cells():
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if c.metadata.get("nbgrader")}


def source(grade_id):
    return cells()[grade_id].source


# ---------------------------------------------------------------- gru_latch_weights

def latch_inputs(n, T=20, flags=None, fill=None, gen=None):
    v = (torch.rand(T, n, generator=gen) * 2 - 1) if fill is None else torch.full((T, n), float(fill))
    k = torch.randint(0, T, (n,), generator=gen) if flags is None else torch.full((n,), flags)
    rows = torch.arange(n)
    v[k, rows] = torch.rand(n, generator=gen) * 2 - 1
    x = torch.stack([v, torch.zeros(T, n)], -1)
    x[k, rows, 1] = 1.0
    return x, k, v[k, rows]


def test_latch_holds_over_many_random_sequences(ref):
    gru = nn.GRU(2, 1)
    gru.load_state_dict(ref["gru_latch_weights"](), strict=True)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for flag in list(range(20)) + [None] * 10:
        for fill in (None, 1.0, -1.0, 0.0):
            x, k, v = latch_inputs(300, flags=flag, fill=fill, gen=gen)
            with torch.no_grad():
                out, h_n = gru(x)
            worst = max(worst, (h_n[0, :, 0] - torch.tanh(v)).abs().max().item())
            # The state is the output: from the flag on, every output step shows the value.
            after = torch.arange(20).unsqueeze(1) >= k.unsqueeze(0)
            assert ((out[..., 0] - torch.tanh(v)).abs()[after] <= 1e-2).all()
    assert worst <= 2e-3, worst          # the saturated gates leave a wide margin under 1e-2


def test_latch_weights_have_the_documented_format(ref):
    w = ref["gru_latch_weights"]()
    assert {k: tuple(t.shape) for k, t in w.items()} == {
        "weight_ih_l0": (3, 2), "weight_hh_l0": (3, 1), "bias_ih_l0": (3,), "bias_hh_l0": (3,)}
    assert all(t.is_floating_point() for t in w.values())
    for kwargs in ({}, {"batch_first": True}, {"dtype": torch.float64}):
        nn.GRU(2, 1, **kwargs).load_state_dict(w, strict=True)


def test_a_non_saturated_latch_misses_the_tolerance():
    """The exercise needs saturated gates: s = 5 leaks more than 1e-2 over 19 hold steps."""
    s = 5.0
    w = {"weight_ih_l0": torch.tensor([[0.0, 0.0], [0.0, -2 * s], [1.0, 0.0]]),
         "weight_hh_l0": torch.zeros(3, 1), "bias_ih_l0": torch.tensor([0.0, s, 0.0]),
         "bias_hh_l0": torch.zeros(3)}
    gru = nn.GRU(2, 1)
    gru.load_state_dict(w)
    x, k, v = latch_inputs(500, flags=0, fill=1.0, gen=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, h_n = gru(x)
    assert (h_n[0, :, 0] - torch.tanh(v)).abs().max() > 1e-2


# ---------------------------------------------------------------- update_gate

def pinned_update_gate(gru, x, h0):
    """z from PyTorch: GRUCells with the candidate pinned to +1 and -1 (independent of the notebook)."""
    H = gru.hidden_size
    with torch.no_grad():
        out, _ = gru(x, h0)
        prev = torch.cat([torch.zeros(1, x.shape[1], H, dtype=x.dtype) if h0 is None else h0, out[:-1]])
        res = []
        for sign in (1.0, -1.0):
            c = nn.GRUCell(gru.input_size, H).to(x.dtype)
            c.weight_ih.copy_(gru.weight_ih_l0)
            c.weight_hh.copy_(gru.weight_hh_l0)
            c.bias_ih.copy_(gru.bias_ih_l0 if gru.bias else torch.zeros(3 * H))
            c.bias_hh.copy_(gru.bias_hh_l0 if gru.bias else torch.zeros(3 * H))
            c.weight_ih[2 * H:] = 0
            c.weight_hh[2 * H:] = 0
            c.bias_hh[2 * H:] = 0
            c.bias_ih[2 * H:] = 40 * sign
            res.append(torch.stack([c(x[t], prev[t]) for t in range(x.shape[0])]))
    return 1 - (res[0] - res[1]) / 2


def gru_configs(seed, n):
    rng = random.Random(seed)
    for i in range(n):
        yield dict(T=rng.randint(1, 8), B=rng.randint(1, 5), I=rng.randint(1, 6), H=rng.randint(1, 7),
                   bias=rng.random() < 0.6, with_h0=rng.random() < 0.5,
                   dtype=rng.choice([torch.float32, torch.float64]), seed=i)


def test_update_gate_against_pinned_cells(ref):
    for cfg in gru_configs(0, 60):
        torch.manual_seed(cfg["seed"])
        gru = nn.GRU(cfg["I"], cfg["H"], bias=cfg["bias"]).to(cfg["dtype"])
        x = torch.randn(cfg["T"], cfg["B"], cfg["I"], dtype=cfg["dtype"])
        h0 = torch.randn(1, cfg["B"], cfg["H"], dtype=cfg["dtype"]) if cfg["with_h0"] else None
        with torch.no_grad():
            got = ref["update_gate"](gru, x, h0)
        want = pinned_update_gate(gru, x, h0)
        tol = 1e-6 if cfg["dtype"] == torch.float32 else 1e-12
        assert got.shape == want.shape and torch.allclose(got, want, atol=tol), cfg


def test_update_gate_is_the_keep_share(ref):
    """h_t = z h_{t-1} + (1 - z) n_t: with the candidate pinned at 0 the state shrinks by exactly z."""
    torch.manual_seed(0)
    gru = nn.GRU(3, 4).double()
    with torch.no_grad():
        gru.weight_ih_l0[8:] = 0
        gru.weight_hh_l0[8:] = 0
        gru.bias_ih_l0[8:] = 0
        gru.bias_hh_l0[8:] = 0                      # n = tanh(0) = 0
        x = torch.randn(6, 2, 3, dtype=torch.float64)
        h0 = torch.rand(1, 2, 4, dtype=torch.float64) + 0.5
        out, _ = gru(x, h0)
        z = ref["update_gate"](gru, x, h0)
    prev = torch.cat([h0, out[:-1]])
    assert torch.allclose(out, z * prev, atol=1e-12)


def test_notebook_truth_helper_agrees(ref):
    ns = dict(ref)
    exec(compile(source("test-helpers"), "test-helpers", "exec"), ns)
    for cfg in gru_configs(1, 20):
        torch.manual_seed(cfg["seed"])
        gru = nn.GRU(cfg["I"], cfg["H"], bias=cfg["bias"]).to(cfg["dtype"])
        x = torch.randn(cfg["T"], cfg["B"], cfg["I"], dtype=cfg["dtype"])
        h0 = torch.randn(1, cfg["B"], cfg["H"], dtype=cfg["dtype"]) if cfg["with_h0"] else None
        assert torch.allclose(ns["_true_update_gate"](gru, x, h0), pinned_update_gate(gru, x, h0), atol=1e-7)


# ---------------------------------------------------------------- generate

def decode_with_cells(gru, readout, first, steps, hidden):
    """Step-by-step decoding with one nn.GRUCell per layer, weights copied in."""
    L, H, B = gru.num_layers, gru.hidden_size, first.shape[0]
    with torch.no_grad():
        cells_ = []
        for layer in range(L):
            c = nn.GRUCell(gru.input_size if layer == 0 else H, H, bias=gru.bias).to(first.dtype)
            for name, p in c.named_parameters():
                p.copy_(getattr(gru, f"{name}_l{layer}"))
            cells_.append(c)
        h = [torch.zeros(B, H, dtype=first.dtype) if hidden is None else hidden[layer] for layer in range(L)]
        inp, ys = first, []
        for _ in range(steps):
            below = inp
            for layer in range(L):
                h[layer] = cells_[layer](below, h[layer])
                below = h[layer]
            inp = readout(h[-1])
            ys.append(inp)
    return torch.stack(ys, 1 if gru.batch_first else 0), torch.stack(h)


def test_generate_against_grucells(ref):
    rng = random.Random(2)
    for i in range(60):
        dtype = rng.choice([torch.float32, torch.float64])
        torch.manual_seed(i)
        I, H, L, B, steps = rng.randint(1, 5), rng.randint(1, 6), rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 7)
        gru = nn.GRU(I, H, num_layers=L, bias=rng.random() < 0.6, batch_first=rng.random() < 0.5).to(dtype)
        readout = nn.Linear(H, I).to(dtype)
        first = torch.randn(B, I, dtype=dtype)
        hidden = torch.randn(L, B, H, dtype=dtype) if rng.random() < 0.5 else None
        with torch.no_grad():
            ys, h = ref["generate"](gru, readout, first, steps, hidden)
        want_ys, want_h = decode_with_cells(gru, readout, first, steps, hidden)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        assert ys.shape == want_ys.shape and torch.allclose(ys, want_ys, atol=tol), i
        assert h.shape == want_h.shape and torch.allclose(h, want_h, atol=tol), i


def test_generate_equals_one_call_over_the_fed_inputs(ref):
    """Carrying the state is exact: the decoder's predictions are one call over what it fed."""
    torch.manual_seed(5)
    gru, readout = nn.GRU(3, 6, num_layers=3).double(), nn.Linear(6, 3).double()
    first, h0 = torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 2, 6, dtype=torch.float64)
    with torch.no_grad():
        ys, h = ref["generate"](gru, readout, first, 9, h0)
        out, h_once = gru(torch.cat([first.unsqueeze(0), ys[:-1]]), h0)
    assert torch.allclose(readout(out), ys, atol=1e-12) and torch.allclose(h_once, h, atol=1e-12)


@pytest.mark.parametrize("layers,batch_first", [(1, False), (2, True)])
def test_generate_rejects_bidirectional(ref, layers, batch_first):
    gru = nn.GRU(3, 4, num_layers=layers, bidirectional=True, batch_first=batch_first)
    with pytest.raises(ValueError):
        ref["generate"](gru, nn.Linear(4, 3), torch.randn(2, 3), 2)


# ---------------------------------------------------------------- the claims

def assigned(src, name):
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found")


def test_claims_context_and_helpers_agree(ref):
    shown = assigned(source("claims-context"), "CLAIM_EXPR")
    graded = assigned(source("test-helpers"), "_CLAIM_EXPR")
    assert shown == graded and len(shown) == 12
    ns = dict(ref)
    exec(compile(source("claims-context"), "claims-context", "exec"), ns)
    exec(compile(source("test-helpers"), "test-helpers", "exec"), ns)
    for cfg in (dict(), dict(B=2, T=4, L=3, k=3, seed=9, dtype=torch.float64)):
        visible = ns["claims_context"](**cfg)
        truth = {k: bool(eval(e, dict(visible))) for k, e in shown.items()}
        assert truth == ns["_claim_truth"](**cfg)


def test_claims_have_one_truth_in_every_configuration(ref):
    ns = dict(ref)
    exec(compile(source("test-helpers"), "test-helpers", "exec"), ns)
    rng = random.Random(3)
    truths = []
    for i in range(40):
        T = rng.randint(2, 8)
        cfg = dict(B=rng.randint(1, 6), T=T, I=rng.randint(1, 6), H=rng.randint(1, 6), L=rng.randint(2, 4),
                   k=rng.randint(1, T - 1), seed=300 + i, dtype=rng.choice([torch.float32, torch.float64]))
        truths.append(ns["_claim_truth"](**cfg))
    for name in ns["_CLAIM_EXPR"]:
        assert len({t[name] for t in truths}) == 1, f"claim {name} depends on the configuration"
    answers = ref["my_claims"]()
    assert truths[0] == answers
    assert set(answers.values()) == {True, False}


# ---------------------------------------------------------------- grade cells vs wrong answers

def grade(grade_id, **overrides):
    """Run one grade cell on the reference with some names replaced: None if it passes, else the
    failure's type and message (what the student reads)."""
    ns = solution_code.load(NAME)
    exec(compile(source("test-helpers"), "test-helpers", "exec"), ns)
    ns.update(overrides)
    try:
        exec(compile(source(grade_id), grade_id, "exec"), ns)
    except Exception as exc:          # nbgrader scores any exception 0
        return f"{type(exc).__name__}: {exc}"
    return None


def test_grade_cells_pass_on_the_reference():
    for gid in GRADE_IDS:
        assert grade(gid) is None, gid


def latch(s=10.0, swap=False, value_gain=1.0, never_write=False):
    zw, zb = (2 * s, -s) if swap else (-2 * s, s)
    if never_write:
        zw = 0.0
    w = {"weight_ih_l0": torch.tensor([[0.0, 0.0], [0.0, zw], [value_gain, 0.0]]),
         "weight_hh_l0": torch.zeros(3, 1), "bias_ih_l0": torch.tensor([0.0, zb, 0.0]),
         "bias_hh_l0": torch.zeros(3)}
    return lambda: {k: v.clone() for k, v in w.items()}


@pytest.mark.parametrize("weights,message", [
    (latch(swap=True), "follows the LAST value"),
    (latch(s=5.0), "fades over the hold steps"),
    (latch(never_write=True), "stays near 0"),
    (latch(value_gain=2.0), "the candidate n = tanh(value)"),
])
def test_latch_grade_cell_rejects(weights, message):
    failure = grade("test_gru_latch_weights_holds", gru_latch_weights=weights)
    assert failure and message in failure, failure


@pytest.mark.parametrize("weights,message", [
    (lambda: [torch.zeros(3, 2)], "should return a dict"),
    (lambda: {**latch()(), "bias_hh_l0": [0.0, 0.0, 0.0]}, "should be a tensor"),
    (lambda: {k: v for k, v in latch()().items() if k != "bias_hh_l0"}, "missing ['bias_hh_l0']"),
    (lambda: {**latch()(), "weight_ih_l0": torch.zeros(4, 2)}, "should have shape (3, 2)"),
    (lambda: {k: v.long() for k, v in latch()().items()}, "should be a float tensor"),
])
def test_latch_format_grade_cell_rejects(weights, message):
    failure = grade("test_gru_latch_weights_format", gru_latch_weights=weights)
    assert failure and message in failure, failure


def wrong_update_gate(kind):
    def update_gate(gru, x, h0=None):
        H = gru.hidden_size
        out, _ = gru(x, h0)
        start = x.new_zeros(1, x.shape[1], H) if (h0 is None or kind == "ignore_h0") else h0
        prev = out if kind == "no_shift" else torch.cat([start, out[:-1]])
        block = {"reset": 0, "candidate": 2}.get(kind, 1)
        rows = slice(block * H, (block + 1) * H)
        a = x @ gru.weight_ih_l0[rows].T + prev @ gru.weight_hh_l0[rows].T
        if gru.bias:
            a = a + (0 if kind == "only_hh" else gru.bias_ih_l0[rows]) + (0 if kind == "only_ih" else gru.bias_hh_l0[rows])
        z = torch.sigmoid(a)
        if kind == "one_minus":
            z = 1 - z
        if kind == "batch_major":
            z = z.transpose(0, 1)
        return z
    return update_gate


@pytest.mark.parametrize("kind,message", [
    ("reset", "reset gate r"), ("candidate", "candidate's block"), ("one_minus", "that is 1 - z"),
    ("no_shift", "BEFORE step t"), ("ignore_h0", "the previous state is h0"),
    ("only_ih", "added only bias_ih"), ("only_hh", "added only bias_hh"),
    ("batch_major", "expected (T, B, H)"),
])
def test_update_gate_grade_cell_rejects(kind, message):
    failure = grade("test_update_gate", update_gate=wrong_update_gate(kind))
    assert failure and message in failure, failure


def wrong_generate(kind):
    def generate(gru, readout, first_input, steps, hidden=None):
        if gru.bidirectional and kind != "no_check":
            raise ValueError("bidirectional")
        axis = 0 if kind == "always_time_major" else (1 if gru.batch_first else 0)
        inp, ys = first_input, []
        for _ in range(steps):
            step = inp if kind == "no_time_axis" else inp.unsqueeze(axis)
            out, new_hidden = gru(step, None if kind == "restart" else hidden)
            hidden = new_hidden
            y = readout(hidden[0] if kind == "bottom" else hidden[-1])
            ys.append(y)
            inp = first_input if kind == "no_feedback" else y
        return torch.stack(ys, dim=0 if kind == "stack_time_major" else axis), hidden
    return generate


@pytest.mark.parametrize("grade_id,kind,message", [
    ("test_generate", "bottom", "reads the BOTTOM layer"),
    ("test_generate", "restart", "starts from zeros at every step"),
    ("test_generate", "no_feedback", "feed each prediction back"),
    ("test_generate", "no_time_axis", "one step is one call of gru on a (1, B, I) input"),
    ("test_generate_batch_first", "stack_time_major", "ys should be a tensor of shape (B, steps, I)"),
    ("test_generate_batch_first", "always_time_major", "ys should be a tensor of shape (B, steps, I)"),
    ("test_generate_bidirectional", "no_check", "should raise ValueError for a bidirectional GRU"),
])
def test_generate_grade_cells_reject(grade_id, kind, message):
    failure = grade(grade_id, generate=wrong_generate(kind))
    assert failure and message in failure, failure


def test_generate_bidirectional_cell_names_a_crash():
    def generate(gru, readout, first_input, steps, hidden=None):
        out, hidden = gru(first_input.unsqueeze(0), hidden)
        return readout(out[0]).unsqueeze(0), hidden        # (1, B, 2H) into Linear(H, I): a crash
    failure = grade("test_generate_bidirectional", generate=generate)
    assert failure and "raised RuntimeError for a bidirectional GRU" in failure, failure


def test_generate_bidirectional_cell_rejects_a_silent_run():
    def generate(gru, readout, first_input, steps, hidden=None):
        return torch.zeros(steps, *first_input.shape), hidden
    failure = grade("test_generate_bidirectional", generate=generate)
    assert failure and "should raise ValueError" in failure, failure


def test_claims_grade_cell_rejects():
    answers = solution_code.load(NAME)["my_claims"]()
    cases = [
        ({k: None for k in answers}, "make a prediction"),
        ({**answers, "z_zero_forgets_the_state": True}, "'z_zero_forgets_the_state' (it is False)"),
        ({k: int(v) for k, v in answers.items()}, "must be True or False"),
        ({k: v for k, v in answers.items() if k != "carry_gives_whole_h_n"}, "lacks ['carry_gives_whole_h_n']"),
        ({**answers, "extra": True}, "unknown claims ['extra']"),
    ]
    for claims, message in cases:
        failure = grade("test_my_claims", my_claims=lambda c=claims: dict(c))
        assert failure and message in failure, (message, failure)


# ---------------------------------------------------------------- cell conventions

def test_grade_cells_open_with_a_docstring_print_once_and_end_in_a_statement():
    for gid in GRADE_IDS:
        src = source(gid)
        visible = src.split("### BEGIN HIDDEN TESTS")[0]
        body = ast.parse(src).body
        assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), gid
        assert "\n" not in body[0].value.value, gid
        assert visible.count("print(") == 1, gid
        assert not isinstance(body[-1], ast.Expr), f"{gid} ends with an expression statement"
        assert cells()[gid].metadata.get("jupyter", {}).get("source_hidden") is True, gid


def test_helpers_cell_only_defines():
    for node in ast.parse(source("test-helpers")).body:
        assert isinstance(node, (ast.FunctionDef, ast.Assign, ast.Import, ast.ImportFrom)), ast.dump(node)[:80]
        if isinstance(node, (ast.FunctionDef, ast.Assign)):
            names = [node.name] if isinstance(node, ast.FunctionDef) else [t.id for t in node.targets]
            assert all(n.startswith("_") for n in names), names


def test_every_exercise_has_hints_below_it():
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    for i, c in enumerate(nb.cells):
        if c.metadata.get("nbgrader", {}).get("solution"):
            nxt = nb.cells[i + 1]
            assert "hints" in nxt.metadata.get("tags", []) and nxt.source.count("<details>") >= 2, \
                c.metadata["nbgrader"]["grade_id"]


def test_student_copy_has_no_answers():
    nb = nbformat.read(paths.student_path(NAME), as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert text.count("raise NotImplementedError()") == 4
    claims_cell = next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "my_claims")
    ns = {}
    exec(claims_cell.replace("raise NotImplementedError()", "pass"), ns)
    assert set(ns["my_claims"]().values()) == {None}
