"""Notebook 05: the reference HandLSTM / FastHandLSTM against nn.LSTM, the grade cells against
wrong answers, the custom autograd Function with gradcheck, and the handlstm benchmark."""
import random
import warnings

import nbformat
import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence
from torch.overrides import TorchFunctionMode

from grader import bench, paths, solution_code

NAME = "06_hand_written_bilstm"


class _NoBuiltinRNN(TorchFunctionMode):
    FORBIDDEN = {"lstm", "lstm_cell", "gru", "gru_cell", "rnn_tanh", "rnn_relu",
                 "rnn_tanh_cell", "rnn_relu_cell", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.FORBIDDEN:
            raise AssertionError(f"built-in {func.__name__} called")
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def ns():
    return solution_code.load(NAME)


@pytest.fixture(scope="module")
def cells():
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells if c.cell_type == "code"}


# ------------------------------------------------------------------ reference code vs nn.LSTM
def _configs(n, seed):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        out.append(dict(
            kw=dict(input_size=rng.randint(1, 5), hidden_size=rng.randint(1, 6), num_layers=rng.randint(1, 3),
                    bias=rng.random() < 0.7, batch_first=rng.random() < 0.5,
                    bidirectional=rng.random() < 0.6, dropout=rng.choice([0.0, 0.0, 0.4])),
            kind=("batched", "packed", "packed", "unbatched")[k % 4],
            hx=rng.random() < 0.5,
            dtype=(torch.float64, torch.float32)[k % 2 if k < n - 2 else 0],
            lens=[1] + [rng.randint(1, 7) for _ in range(rng.randint(1, 4))],
            T=rng.randint(1, 6), B=rng.randint(1, 4)))
    return out


def _compare(cls, cfg):
    kw, dtype = cfg["kw"], cfg["dtype"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nn.LSTM(**kw).to(dtype).eval()
        me = cls(**kw).to(dtype).eval()
    me.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(me.state_dict(), strict=True)
    I, H, D = kw["input_size"], kw["hidden_size"], 2 if kw["bidirectional"] else 1
    if cfg["kind"] == "packed":
        rng = random.Random(len(cfg["lens"]))
        lens = cfg["lens"][:]
        rng.shuffle(lens)                                   # unsorted, with a length-1 sequence
        x = pack_sequence([torch.randn(n, I, dtype=dtype) for n in lens], enforce_sorted=False)
        leaf = x.data.requires_grad_()
        B = len(lens)
    elif cfg["kind"] == "unbatched":
        leaf = x = torch.randn(cfg["T"], I, dtype=dtype, requires_grad=True)
        B = None
    else:
        B = cfg["B"]
        shape = (B, cfg["T"], I) if kw["batch_first"] else (cfg["T"], B, I)
        leaf = x = torch.randn(shape, dtype=dtype, requires_grad=True)
    args = [x]
    if cfg["hx"]:
        shape = (kw["num_layers"] * D, H) if B is None else (kw["num_layers"] * D, B, H)
        args.append((torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)))
    res = []
    for m in (ref, me):
        with _NoBuiltinRNN() if m is me else warnings.catch_warnings():
            out, (h, c) = m(*args)
            od = out.data if isinstance(out, PackedSequence) else out
            gen = torch.Generator().manual_seed(5)
            loss = sum((t * torch.randn(t.shape, generator=gen, dtype=dtype)).sum() for t in (od, h, c))
            grads = torch.autograd.grad(loss, [leaf] + list(m.parameters()))
        res.append((out, od, h, c, grads))
    tol = 1e-8 if dtype == torch.float64 else 1e-5
    (o1, d1, h1, c1, g1), (o2, d2, h2, c2, g2) = res
    assert type(o1) is type(o2)
    if isinstance(o1, PackedSequence):
        for f in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert torch.equal(getattr(o1, f), getattr(o2, f)), f
    for name, a, b in [("output", d1, d2), ("h_n", h1, h2), ("c_n", c1, c2)] + \
            [(f"grad {n}", a, b) for n, a, b in zip(["input"] + [n for n, _ in ref.named_parameters()], g1, g2)]:
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert (a - b).abs().max().item() <= tol, f"{name} differs by {(a - b).abs().max().item():.2e} ({cfg})"


@pytest.mark.parametrize("cls_name", ["HandLSTM", "FastHandLSTM"])
@pytest.mark.parametrize("cfg", _configs(16, seed=2026), ids=lambda c: f"{c['kind']}-{c['dtype']}")
def test_matches_nn_lstm_values_and_gradients(ns, cls_name, cfg):
    torch.manual_seed(0)
    _compare(ns[cls_name], cfg)


@pytest.mark.parametrize("cls_name", ["HandLSTM", "FastHandLSTM"])
def test_dropout_between_layers_only(ns, cls_name):
    cls = ns[cls_name]
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    ref = nn.LSTM(3, 4, 2, dropout=1.0, bidirectional=True).double().train()
    me = cls(3, 4, 2, dropout=1.0, bidirectional=True).double().train()
    me.load_state_dict(ref.state_dict())
    assert torch.allclose(me(x)[0], ref(x)[0], atol=1e-10, rtol=0)      # p=1 is deterministic
    half = cls(3, 4, 2, dropout=0.5).double()
    assert not torch.allclose(half.train()(x)[0], half.eval()(x)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = cls(3, 4, 1, dropout=0.9).double()
    assert torch.equal(one.train()(x)[0], one.eval()(x)[0])


def test_recurrence_gradcheck(ns):
    fn = ns["LSTMRecurrence"]
    torch.manual_seed(0)
    T, B, H = 4, 3, 2
    args = (torch.randn(T, B, 4 * H, dtype=torch.float64, requires_grad=True),
            torch.randn(B, H, dtype=torch.float64, requires_grad=True),
            torch.randn(B, H, dtype=torch.float64, requires_grad=True),
            torch.randn(4 * H, H, dtype=torch.float64, requires_grad=True))
    valid = (torch.arange(T)[:, None] < torch.tensor([4, 1, 2])[None, :]).unsqueeze(-1)
    for mask in (None, valid):
        for reverse in (False, True):
            assert torch.autograd.gradcheck(lambda *a: fn.apply(*a, mask, reverse), args, fast_mode=mask is None)


# ------------------------------------------------------------------ grade cells against wrong answers
def _run(cells, replace=None, extra=None, grade=None):
    """Run setup + answer cells (optionally edited) and then one grade cell; return the error or None."""
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    g = {}
    for c in nb.cells:
        meta = c.metadata.get("nbgrader", {})
        if "setup" in c.metadata.get("tags", []) or (meta.get("solution") and not meta.get("grade")):
            src = c.source
            for old, new in (replace or {}).items():
                src = src.replace(old, new)
            exec(compile(src, meta["grade_id"], "exec"), g)
    if extra:
        exec(extra, g)
    try:
        exec(compile(cells[grade], grade, "exec"), g)
    except AssertionError as e:
        return str(e)
    return None


def test_grade_cells_pass_on_the_solution(cells):
    for grade in ("test_lstm_direction", "test_lstm_layer", "test_HandLSTM", "test_packed"):
        assert _run(cells, grade=grade) is None, grade


WRONG = [
    ("gate order i, f, o, g", {"i, f, g, o = gates.chunk(4, dim=1)": "i, f, o, g = gates.chunk(4, dim=1)"},
     None, "test_lstm_direction", "outputs (forward)"),
    ("only one bias", {"xw = xw + (bias_ih + bias_hh)": "xw = xw + bias_ih"}, None, "test_lstm_direction", "differs"),
    ("reverse outputs stored flipped", {"    return torch.stack(outputs), (h, c)":
                                        "    return torch.stack(outputs[::-1] if reverse else outputs), (h, c)"},
     None, "test_lstm_direction", "outputs (reverse)"),
    ("directions stacked in the wrong order", {"torch.cat(outs, dim=2)": "torch.cat(outs[::-1], dim=2)"},
     None, "test_lstm_layer", "output"),
    ("dropout after the last layer too", {"if layer > 0 and self.dropout > 0 and self.training:":
                                          "if self.dropout > 0 and self.training:"}, None, "test_HandLSTM", "dropout"),
    ("nn.LSTM inside", None, "class HandLSTM(nn.LSTM):\n    pass\n", "test_HandLSTM", "built-in"),
    ("torch.lstm_cell inside", None,
     "_plain = lstm_direction\n"
     "def lstm_direction(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse=False, lengths=None):\n"
     "    if lengths is not None or bias_ih is None:\n"
     "        return _plain(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, reverse, lengths)\n"
     "    h, c, outs = h0, c0, [None] * len(x)\n"
     "    for t in (range(len(x) - 1, -1, -1) if reverse else range(len(x))):\n"
     "        h, c = torch.lstm_cell(x[t], (h, c), weight_ih, weight_hh, bias_ih, bias_hh)\n"
     "        outs[t] = h\n"
     "    return torch.stack(outs), (h, c)\n", "test_lstm_direction", "built-in"),
    ("lengths ignored", {"if lengths is None:\n            h, c = h_new, c_new": "if True:\n            h, c = h_new, c_new"},
     None, "test_packed", "with lengths"),
    ("h_n left in sorted order", {"if input.unsorted_indices is not None:  ": "if False:  "},
     None, "test_packed", "h_n"),
]


@pytest.mark.parametrize("label,replace,extra,grade,expect", WRONG, ids=[w[0] for w in WRONG])
def test_grade_cells_reject_wrong_answers(cells, label, replace, extra, grade, expect):
    for old in (replace or {}):
        assert any(old in src for src in cells.values()), f"mutation target not found: {old!r}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        err = _run(cells, replace=replace, extra=extra, grade=grade)
    assert err is not None, f"{grade} passes a wrong answer ({label})"
    assert expect in err, f"{grade} fails ({label}) but its message does not say where: {err}"


def test_wrong_backward_fails_the_gradcheck_cell(cells):
    err = _run(cells, replace={"dc_t = torch.addcmul(dc, dh_t, k_c[t])": "dc_t = dc + 0 * dh_t"},
               grade="test_LSTMRecurrence")
    assert err is not None and "gradcheck" in err


# ------------------------------------------------------------------ benchmark
def test_bench_registered_and_runs_on_a_tiny_shape():
    from grader.benchmarks import handlstm
    registry = bench.discover()
    assert {"handlstm-cpu", "handlstm-gpu"} <= set(registry)
    fig = handlstm.measure("cpu", seq_len=4, batch=3, input_size=2, hidden_size=3, num_layers=2,
                           rounds=2, warmup=1)
    for key in ("handlstm_ms", "nnlstm_ms", "ratio", "plain_ms", "plain_ratio"):
        assert fig[key] > 0, key
    assert abs(fig["ratio"] - fig["handlstm_ms"] / fig["nnlstm_ms"]) < 0.01 * fig["ratio"] + 1e-3
    assert fig["max_abs_diff"] < 1e-5
    if not torch.cuda.is_available():
        with pytest.raises(bench.Skip):
            registry["handlstm-gpu"]()
