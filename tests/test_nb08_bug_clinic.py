"""Notebook 08 (bug clinic): the toolkit's reference checks against PyTorch, the five mysteries
really flagged by exactly the checks their diagnoses accept, the reference fixes against PyTorch
over random configurations, and the grade cells against plausible wrong answers (each must fail
with the message a student needs). Pure pytest, no nbgrader.

Grade cells are executed here in one namespace holding the setup cell, the test-helpers cell and
the reference answers, with one name replaced by the implementation under test: the same names a
grade cell sees in the grader's judge.
"""
import random
import warnings

import nbformat
import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from grader import paths, solution_code

NAME = "08_bug_clinic"
CHECKS = ("batch", "padding", "direction", "state", "reference", "reachability")

# What each diagnosis accepts (the hidden tests), and what the reference toolkit finds below.
ACCEPTED = {
    "diagnose_tagger": {"padding", "state"},
    "diagnose_classifier": {"batch"},
    "diagnose_reader": {"direction", "reachability"},
    "diagnose_encoder": {"reachability"},
    "diagnose_stack": {"reference"},
}


def _cells():
    return nbformat.read(paths.solution_path(NAME), as_version=4).cells


def _by_id():
    return {c.metadata["nbgrader"]["grade_id"]: c for c in _cells() if c.metadata.get("nbgrader")}


def _tagged(tag):
    return [c for c in _cells() if tag in c.metadata.get("tags", [])]


HELPERS = _tagged("test-helpers")[0].source


@pytest.fixture(scope="module")
def ref():
    """setup + answers + the test-helpers cell: the names a grade cell sees."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ns = solution_code.load(NAME)
        exec(compile(HELPERS, "<test-helpers>", "exec"), ns)
    return ns


@pytest.fixture(scope="module")
def clinic(ref):
    """The probe data and the five mysteries, as the notebook builds them."""
    ns = dict(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cell in _tagged("mystery"):
            exec(compile(cell.source, "<mystery>", "exec"), ns)
    return ns


def grade_cell(grade_id):
    return _by_id()[grade_id].source


def visible(grade_id):
    return grade_cell(grade_id).split("### BEGIN HIDDEN TESTS")[0]


def run_cell(ref, source, **replace):
    """Run a grade cell with some names replaced; the test helpers are defined again in the same
    namespace, so that they, too, call the replacements (as they do in a notebook)."""
    ns = dict(ref)
    ns.update(replace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(HELPERS, "<test-helpers>", "exec"), ns)
        exec(compile(source, "<grade cell>", "exec"), ns)


def fails_with(ref, grade_id, phrase, hidden=False, **replace):
    """The grade cell (visible part unless hidden) fails with an AssertionError naming `phrase`."""
    source = grade_cell(grade_id) if hidden else visible(grade_id)
    with pytest.raises(AssertionError) as info:
        run_cell(ref, source, **replace)
    assert phrase in str(info.value), str(info.value)
    return str(info.value)


def define(ref, source, name):
    ns = dict(ref)
    exec(source, ns)
    return ns[name]


# ---------------------------------------------------------------- every grade cell, reference and stub

GRADE_IDS = [gid for gid, c in _by_id().items() if c.metadata["nbgrader"].get("grade")]


def test_grade_cells_are_the_ones_this_file_knows():
    assert set(GRADE_IDS) == {
        "test_batch_invariance", "test_padding_invariance", "test_direction_sensitivity",
        "test_state_consistency", "test_step_errors", "test_unreached_parameters",
        "test_diagnose_tagger", "test_diagnose_classifier", "test_diagnose_reader",
        "test_diagnose_encoder", "test_diagnose_stack",
        "test_run_padded_output", "test_run_padded_state",
        "test_LayerStateClassifier_head", "test_LayerStateClassifier_forward",
        "test_stacked_rnn_gru", "test_stacked_rnn_lstm", "test_stacked_rnn_bidirectional",
        "test_stacked_rnn_gradients"}
    points = {gid: _by_id()[gid].metadata["nbgrader"]["points"] for gid in GRADE_IDS}
    assert sum(points.values()) == 25
    assert max(points.values()) <= 2, "a cell worth more than 2 points must check one thing"


@pytest.mark.parametrize("grade_id", GRADE_IDS)
def test_grade_cell_passes_with_the_reference(ref, grade_id, capsys):
    run_cell(ref, grade_cell(grade_id))
    out = capsys.readouterr()
    assert out.err == ""
    assert len(out.out.strip().splitlines()) == 1, "one success line"


# ---------------------------------------------------------------- the toolkit against PyTorch

def test_batch_invariance_over_modules(ref):
    torch.manual_seed(0)
    check = ref["batch_invariance"]
    x = torch.randn(5, 4, 3)
    for model, want in [(nn.GRU(3, 2, 2, batch_first=True), True), (nn.LSTM(3, 2, batch_first=True), True),
                        (nn.Linear(3, 2), True), (nn.GRU(3, 2), False), (nn.LSTM(3, 2, bidirectional=True), False),
                        (nn.BatchNorm1d(4).train(), False), (nn.BatchNorm1d(4).eval(), True)]:
        assert check(model, x) is want, model


def test_padding_invariance_over_modules(ref):
    check = ref["padding_invariance"]
    for seed in range(4):
        rng = random.Random(seed)
        torch.manual_seed(seed)
        T = rng.randint(2, 7)
        lengths = [rng.randint(1, T) for _ in range(rng.randint(1, 5))]
        x = ref["_padded"](lengths, T, 3)
        cls = rng.choice([nn.GRU, nn.LSTM, nn.RNN])
        L = rng.randint(1, 3)
        assert check(cls(3, 2, L, batch_first=True), x, lengths) is True
        assert check(cls(3, 2, L, batch_first=True, bidirectional=True), x, lengths) is False


def test_direction_sensitivity_against_the_jacobian(ref):
    torch.manual_seed(0)
    for model, x1, step in [(nn.GRU(2, 3, bidirectional=True, batch_first=True), torch.randn(1, 6, 2), -1),
                            (nn.LSTM(2, 3, 2, bidirectional=True, batch_first=True), torch.randn(1, 5, 2), 1),
                            (nn.Sequential(nn.Flatten(1), nn.Linear(8, 4)), torch.randn(1, 4, 2), -1)]:
        S = ref["direction_sensitivity"](model, x1, step)
        y = lambda inp: (model(inp)[0][0, step] if isinstance(model, nn.RNNBase) else model(inp)[0])
        jac = torch.autograd.functional.jacobian(y, x1).abs().sum(dim=(1, 3))
        F = jac.shape[0]
        assert torch.allclose(S, torch.stack([jac[:F // 2].sum(0), jac[F // 2:].sum(0)]), atol=1e-6)


def test_state_consistency_over_random_packed_runs(ref):
    check = ref["state_consistency"]
    for seed in range(4):
        rng = random.Random(seed)
        torch.manual_seed(seed)
        T = rng.randint(2, 6)
        lengths = [rng.randint(1, T) for _ in range(3)]
        lengths[0] = T - 1 if T > 1 else 1          # at least one sequence shorter than T
        x = ref["_padded"](lengths, T, 2)
        rnn = rng.choice([nn.GRU, nn.LSTM])(2, 3, rng.randint(1, 3), batch_first=True,
                                             bidirectional=rng.random() < 0.5)
        with torch.no_grad():
            out, state = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, batch_first=True)
            h = state[0] if isinstance(state, tuple) else state
            assert check(out, h, lengths) is True
            out_u, state_u = rnn(x)
            h_u = state_u[0] if isinstance(state_u, tuple) else state_u
            assert check(out_u, h_u, lengths) is False


def test_unreached_parameters_leaves_grads_alone(ref):
    gru = nn.GRU(3, 4, 2, batch_first=True)
    assert ref["unreached_parameters"](gru, torch.randn(2, 1, 3)) == ["weight_hh_l0", "weight_hh_l1"]
    assert all(p.grad is None for p in gru.parameters())


# ---------------------------------------------------------------- the mysteries and their diagnoses

def flags(ref, clinic):
    """Which checks flag each mystery, used as the notebook's contracts allow (reference toolkit)."""
    c = clinic
    batch, padding = ref["batch_invariance"], ref["padding_invariance"]
    state, unreached = ref["state_consistency"], ref["unreached_parameters"]
    direction, step_errors = ref["direction_sensitivity"], ref["step_errors"]
    out = {}
    with torch.no_grad():
        lstm_out, (lstm_h, _) = c["tagger"].lstm(c["probe_x"])
    out["diagnose_tagger"] = {
        "batch": not batch(c["tagger"], c["probe_x"]),
        "padding": not padding(c["tagger"], c["probe_x"], c["probe_lengths"]),
        "state": not state(lstm_out, lstm_h, c["probe_lengths"]),
        # each head reaches its own output: nothing else is missing
        "reachability": (unreached(c["tagger"], c["probe_x"], 0) != ["intent_head.bias", "intent_head.weight"]
                         or unreached(c["tagger"], c["probe_x"], 1) != ["tag_head.bias", "tag_head.weight"]),
    }
    with torch.no_grad():
        _, (h2, _) = c["classifier"].rnn(c["equal_x"])
        o2, _ = c["classifier"].rnn(c["equal_x"])
    out["diagnose_classifier"] = {
        "batch": not batch(c["classifier"], c["equal_x"]),
        "state": not state(o2, h2),
        "reachability": unreached(c["classifier"], c["equal_x"]) != [],
    }
    S = direction(lambda x: c["reader"].lstm(x)[0][:, -1], c["one_x"])
    with torch.no_grad():
        o3, (h3, _) = c["reader"].lstm(c["equal_x"])
    out["diagnose_reader"] = {
        "batch": not batch(c["reader"], c["equal_x"]),
        "direction": bool((S[1, :-1] == 0).all()),
        "state": not state(o3, h3),
        "reachability": unreached(c["reader"], c["equal_x"]) != [],
    }
    with torch.no_grad():
        o4, h4 = c["encoder"].gru(c["equal_x"])
    out["diagnose_encoder"] = {
        "batch": not batch(c["encoder"], c["equal_x"]),
        "state": not state(o4, h4),
        "reachability": (unreached(c["encoder"], c["equal_x"], 1) != []
                         and unreached(c["encoder"], c["equal_x"], 0) == []),
    }
    layers = c["layers"]
    run = lambda x: c["stacked_gru"](layers, x)
    holder = nn.ModuleList(layers)
    holder.forward = run
    errs = step_errors(run, ref["_stack_twin"](layers), c["equal_x"])
    out["diagnose_stack"] = {
        "batch": not batch(run, c["equal_x"]),
        "state": not state(*run(c["equal_x"])),
        "reference": bool(errs[0] > 1e-2 and errs[-1] < errs[0]),
        "reachability": unreached(holder, c["equal_x"]) != [],
    }
    return out


def test_each_mystery_is_flagged_by_exactly_the_checks_its_diagnosis_accepts(ref, clinic):
    for fn, found in flags(ref, clinic).items():
        assert {k for k, v in found.items() if v} == ACCEPTED[fn], (fn, found)


def test_mysteries_outside_their_contract_fail_the_padding_check(ref, clinic):
    """Why the notebook insists on contracts: equal-length code fails the padding check anyway."""
    c = clinic
    for name in ("classifier", "reader", "encoder"):
        assert ref["padding_invariance"](c[name], c["equal_x"], [8] * 6) is False


@pytest.mark.parametrize("fn", list(ACCEPTED))
def test_diagnosis_cells_accept_exactly_the_flagging_checks(ref, fn, capsys):
    for answer in CHECKS:
        stub = (lambda a=answer: a)
        if answer in ACCEPTED[fn]:
            run_cell(ref, grade_cell(f"test_{fn}"), **{fn: stub})
        else:
            msg = fails_with(ref, f"test_{fn}", "", hidden=True, **{fn: stub})
            assert len(msg) > 40, (fn, answer, msg)
        run_cell(ref, visible(f"test_{fn}"), **{fn: stub})     # the visible part never tells
    capsys.readouterr()
    fails_with(ref, f"test_{fn}", "not one of the checks", **{fn: lambda: "padding invariance"})
    fails_with(ref, f"test_{fn}", "must return a string", **{fn: lambda: 2})
    run_cell(ref, grade_cell(f"test_{fn}"), **{fn: lambda: " " + sorted(ACCEPTED[fn])[0].upper() + " "})


# ---------------------------------------------------------------- fixes against PyTorch

@pytest.mark.parametrize("seed", range(6))
def test_run_padded_random(ref, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    T = rng.randint(1, 7)
    lengths = [rng.randint(1, T) for _ in range(rng.randint(1, 5))]
    cls = rng.choice([nn.RNN, nn.GRU, nn.LSTM])
    rnn = cls(3, 4, rng.randint(1, 3), batch_first=True, bidirectional=rng.random() < 0.5)
    x = ref["_padded"](lengths, T, 3)
    ref["_check_run_padded_output"](rnn, x, lengths, "random")
    ref["_check_run_padded_state"](rnn, x, lengths, "random")


@pytest.mark.parametrize("L,bi,proj", [(1, False, 0), (2, False, 0), (3, True, 0), (2, True, 2), (1, False, 3)])
def test_layer_state_classifier_is_batch_invariant(ref, L, bi, proj):
    torch.manual_seed(L)
    ref["_check_classifier_head"](L, bi, proj)
    ref["_check_classifier_forward"](L, bi, proj, B=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ref["batch_invariance"](ref["_classifier"](L, bi, proj), torch.randn(4, 6, 3)) is True


@pytest.mark.parametrize("seed", range(6))
def test_stacked_rnn_random(ref, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    cls = rng.choice([nn.GRU, nn.LSTM])
    D = rng.choice([1, 2])
    bf = rng.random() < 0.5
    L, H, I, B, T = rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 3), rng.randint(2, 6)
    layers = [cls(I if k == 0 else D * H, H, bidirectional=D == 2, batch_first=bf) for k in range(L)]
    x = torch.randn(B, T, I) if bf else torch.randn(T, B, I)
    h0 = None
    if seed % 2:
        h0 = torch.randn(L * D, B, H)
        h0 = (h0, torch.randn(L * D, B, H)) if cls is nn.LSTM else h0
    ref["_check_stack"](layers, x, h0)
    ref["_check_stack_gradients"](layers, x, h0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_run_padded_on_the_gpu(ref):
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, 2, batch_first=True, bidirectional=True).cuda()
    x = ref["_padded"]([2, 6, 5, 1], 6, 3).cuda()
    with pytest.raises(RuntimeError, match="CPU"):
        pack_padded_sequence(x, (x != 0).any(dim=2).sum(dim=1), batch_first=True, enforce_sorted=False)
    ref["_check_run_padded_state"](rnn, x, [2, 6, 5, 1], "GPU", atol=2e-3)


# ---------------------------------------------------------------- wrong answers, with the message a student reads

def test_wrong_checks_fail_with_a_useful_message(ref):
    always = define(ref, "def batch_invariance(model, x, atol=1e-5):\n    return True\n", "batch_invariance")
    fails_with(ref, "test_batch_invariance", "seq-first nn.GRU", batch_invariance=always)

    no_extra = define(ref, '''
def padding_invariance(model, x, lengths, atol=1e-5):
    def r(inp):
        y = model(inp)
        return y[0] if isinstance(y, tuple) else y
    y = r(x)
    for b, n in enumerate([int(v) for v in lengths]):
        a = r(x[b:b + 1, :n])[0]
        if y.dim() >= 3:
            a, o = a[:n], y[b, :n]
        else:
            o = y[b]
        if not torch.allclose(a, o, atol=atol):
            return False
    return True
''', "padding_invariance")
    fails_with(ref, "test_padding_invariance", "only the run with 3 more zero steps", padding_invariance=no_extra)

    swapped = define(ref, '''
def direction_sensitivity(model, x1, step=-1):
    x = x1.detach().clone().requires_grad_(True)
    y = model(x)
    y = y[0] if isinstance(y, tuple) else y
    f = y[0, step] if y.dim() >= 3 else y[0]
    S = torch.zeros(2, x.shape[1], dtype=x.dtype)
    for j in range(f.shape[0]):
        g, = torch.autograd.grad(f[j], x, retain_graph=True)
        S[1 if j < f.shape[0] // 2 else 0] += g[0].abs().sum(-1)      # halves the wrong way round
    return S
''', "direction_sensitivity")
    fails_with(ref, "test_direction_sensitivity", "S = [[3, 3, 0, 0], [0, 0, 3, 3]]", direction_sensitivity=swapped)

    popular_claim = define(ref, '''
def state_consistency(output, h_n, lengths=None, atol=1e-5):
    H = h_n.shape[-1]
    return torch.allclose(output[:, -1, :H], h_n[-1], atol=atol)
''', "state_consistency")
    fails_with(ref, "test_state_consistency", "state_consistency returned", state_consistency=popular_claim)

    mean = define(ref, '''
def step_errors(model, reference, x):
    a, b = model(x), reference(x)
    a = a[0] if isinstance(a, tuple) else a
    b = b[0] if isinstance(b, tuple) else b
    if a.shape != b.shape:
        raise ValueError("shapes")
    return (a - b).abs().mean(dim=(0, 2))
''', "step_errors")
    fails_with(ref, "test_step_errors", "differ by 0.5 at every step", step_errors=mean)

    only_none = define(ref, '''
def unreached_parameters(model, x, index=0):
    y = model(x)
    if isinstance(y, tuple):
        y = y[index]
    ys = list(y) if isinstance(y, tuple) else [y]
    named = list(model.named_parameters())
    grads = torch.autograd.grad(sum(t.sum() for t in ys), [p for _, p in named], allow_unused=True)
    return sorted(n for (n, _), g in zip(named, grads) if g is None)
''', "unreached_parameters")
    fails_with(ref, "test_unreached_parameters", "W_hh multiplies the zero initial state", unreached_parameters=only_none)


def test_wrong_fixes_fail_with_a_useful_message(ref):
    unpacked = define(ref, "def run_padded(rnn, x):\n    return rnn(x)\n", "run_padded")
    fails_with(ref, "test_run_padded_output", "only in the backward half", run_padded=unpacked)
    no_total = define(ref, '''
def run_padded(rnn, x):
    lengths = (x != 0).any(dim=2).sum(dim=1)
    out, state = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    return pad_packed_sequence(out, batch_first=True)[0], state
''', "run_padded")
    fails_with(ref, "test_run_padded_output", "with the T of x", run_padded=no_total)
    unsorted_back = define(ref, '''
def run_padded(rnn, x):
    lengths = (x != 0).any(dim=2).sum(dim=1)
    order = lengths.argsort(descending=True)
    out, state = rnn(pack_padded_sequence(x[order], lengths[order], batch_first=True))
    out = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
    return out[order.argsort()], state
''', "run_padded")
    fails_with(ref, "test_run_padded_state", "batch order was not restored", run_padded=unsorted_back)

    viewed = define(ref, '''
class LayerStateClassifier(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, num_classes, bidirectional=False, proj_size=0):
        super().__init__()
        D = 2 if bidirectional else 1
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                           bidirectional=bidirectional, proj_size=proj_size)
        self.head = nn.Linear(num_layers * D * (proj_size or hidden_size), num_classes)

    def forward(self, x):
        _, (h_n, _) = self.rnn(x)
        return self.head(h_n.reshape(x.shape[0], -1))
''', "LayerStateClassifier")
    run_cell(ref, grade_cell("test_LayerStateClassifier_head"), LayerStateClassifier=viewed)
    fails_with(ref, "test_LayerStateClassifier_forward", "SECOND axis", LayerStateClassifier=viewed)
    hidden_times_layers = define(ref, '''
class LayerStateClassifier(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, num_classes, bidirectional=False, proj_size=0):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                           bidirectional=bidirectional, proj_size=proj_size)
        self.head = nn.Linear(hidden_size * num_layers, num_classes)

    def forward(self, x):
        _, (h_n, _) = self.rnn(x)
        return self.head(h_n.transpose(0, 1).reshape(x.shape[0], -1))
''', "LayerStateClassifier")
    fails_with(ref, "test_LayerStateClassifier_head", "num_layers=2, bidirectional=True, proj_size=0",
               LayerStateClassifier=hidden_times_layers)

    upward = define(ref, '''
def stacked_rnn(layers, x, h0=None):
    out, state = x, h0
    for layer in layers:
        out, state = layer(out, state)
    return out, state
''', "stacked_rnn")
    fails_with(ref, "test_stacked_rnn_gru", "largest at the first steps", stacked_rnn=upward)
    twin = define(ref, "def stacked_rnn(layers, x, h0=None):\n    return _stack_twin(layers)(x, h0)\n", "stacked_rnn")
    for gid in ("test_stacked_rnn_gru", "test_stacked_rnn_lstm", "test_stacked_rnn_bidirectional"):
        run_cell(ref, grade_cell(gid), stacked_rnn=twin)           # the right numbers...
    fails_with(ref, "test_stacked_rnn_gradients", "received no gradient", stacked_rnn=twin)   # ...not the layers'


def test_stubs_raise_not_implemented_in_every_grade_cell(ref):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    class Stub(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            raise NotImplementedError()

    names = {gid: gid[len("test_"):] for gid in GRADE_IDS}
    for gid in GRADE_IDS:
        name = names[gid]
        for suffix in ("_output", "_state", "_head", "_forward", "_gru", "_lstm", "_bidirectional", "_gradients"):
            if name.endswith(suffix) and name[:-len(suffix)] in ref:
                name = name[:-len(suffix)]
        assert name in ref, gid
        with pytest.raises(NotImplementedError):
            run_cell(ref, grade_cell(gid), **{name: Stub if name[0].isupper() else stub})
