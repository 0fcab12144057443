"""Notebook 06: the reference HandLSTM / FastHandLSTM / FusedLSTM against nn.LSTM, the guard against
every route to a built-in kernel, the staged grade cells against wrong answers (a mistake costs its
own stage), the optional hand-written backward with gradcheck, and the handlstm benchmark."""
import contextlib
import importlib.util
import io
import random
import re
import warnings
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence, pad_packed_sequence
from torch.overrides import TorchFunctionMode

from grader import bench, paths, solution_code

NAME = "06_hand_written_bilstm"
HIDDEN_MARKERS = re.compile(r"### (BEGIN|END) HIDDEN TESTS\n")
STAGES = {"test_lstm_direction": 2, "test_lstm_direction_reverse": 1, "test_lstm_layer": 2,
          "test_HandLSTM_init": 2, "test_HandLSTM_forward": 2, "test_HandLSTM_hx": 1,
          "test_HandLSTM_unbatched": 1, "test_HandLSTM_dropout": 2, "test_lengths": 2,
          "test_packed_helpers": 1, "test_HandLSTM_packed": 2}
ALTERNATIVES = Path(__file__).parent / "alternatives" / "nb06_hand_written_bilstm.py"


@pytest.fixture(scope="module")
def ns():
    with contextlib.redirect_stdout(io.StringIO()):
        return solution_code.load(NAME, extra_tags=("support",))


@pytest.fixture(scope="module")
def nb():
    return nbformat.read(paths.solution_path(NAME), as_version=4)


def _meta(cell):
    return cell.metadata.get("nbgrader", {})


@pytest.fixture(scope="module")
def cells(nb):
    return {_meta(c)["grade_id"]: c.source for c in nb.cells if c.cell_type == "code"}


@pytest.fixture(scope="module")
def guard():
    """_NoBuiltinRNN from the notebook's test-helpers cell."""
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    g = {}
    for c in nb.cells:
        tags = c.metadata.get("tags", [])
        if "setup" in tags or "test-helpers" in tags:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(c.source, "cell", "exec"), g)
    return g["_NoBuiltinRNN"]


def _alternatives():
    spec = importlib.util.spec_from_file_location("nb06_alternatives", ALTERNATIVES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ the notebook's shape
def test_staged_grade_cells_and_points(nb):
    grade = {_meta(c)["grade_id"]: _meta(c)["points"] for c in nb.cells if _meta(c).get("grade")}
    assert grade == STAGES
    assert sum(grade.values()) == 18
    assert all(points <= 2 for points in grade.values()), "a cell worth more than 2 points checks one thing"


def test_the_hand_written_backward_carries_no_points(nb):
    by_id = {_meta(c).get("grade_id"): c for c in nb.cells}
    assert _meta(by_id["LSTMRecurrence"]).get("solution") and not _meta(by_id["LSTMRecurrence"]).get("grade")
    check = by_id["self-check-recurrence"]
    assert not _meta(check).get("grade") and _meta(check).get("locked")
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "no points" in text.lower() and "1.5–3 hours" in text


def test_no_typed_in_gpu_figure(nb):
    """GPU figures come only from measurements/gpu.json, through the cells tagged gpu-figures."""
    for c in nb.cells:
        if c.cell_type == "markdown" and "gpu-figures" not in c.metadata.get("tags", []):
            assert not re.search(r"\d+(\.\d+)?\s*(ms|×|x)\b", c.source), c.source[:200]
            assert "H100" not in c.source and "4.4 ms" not in c.source
    stamped = [c for c in nb.cells if "gpu-figures" in c.metadata.get("tags", [])]
    assert len(stamped) == 4 and all("<!-- no gpu figures -->" in c.source for c in stamped)


def test_gpu_figure_templates_name_the_benchmark_keys(nb):
    """The stamped cells read only figures that handlstm-gpu writes (grader/benchmarks/handlstm.py)."""
    keys = set()
    for c in nb.cells:
        if "gpu-figures" in c.metadata.get("tags", []):
            keys |= set(re.findall(r"\{bench\[handlstm-gpu\]\[(\w+)\]", c.source))
    produced = {f"{m}_{f}" for m in ("plain", "plain_graphed", "fused", "graphed", "compiled")
                for f in ("ms", "ratio")}
    produced |= {"nnlstm_ms", "nnlstm_busy_ms", "nnlstm_kernels", "fused_busy_ms", "fused_kernels",
                 "fused_gap_ms", "launch_overhead_ms", "arithmetic_gap_ms"}
    assert keys and keys <= produced, keys - produced


# ------------------------------------------------------------------ the guard
@pytest.mark.parametrize("route", [
    "torch.ops.aten.lstm_cell.default", "torch.ops.aten.lstm_cell", "torch._VF.lstm_cell", "torch.lstm_cell",
    "captured", "nn.LSTMCell", "nn.LSTM", "torch.ops.aten.lstm.input", "nn.GRUCell", "nn.GRU", "nn.RNN",
    "torch.ops.aten.gru_cell.default", "torch._VF.rnn_tanh_cell"])
def test_guard_catches_every_route(guard, route):
    torch.manual_seed(0)
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    w_ih, w_hh, b_ih, b_hh = torch.randn(16, 3), torch.randn(16, 4), torch.randn(16), torch.randn(16)
    captured = torch.lstm_cell
    calls = {
        "torch.ops.aten.lstm_cell.default": lambda: torch.ops.aten.lstm_cell.default(x, [h, c], w_ih, w_hh, b_ih, b_hh),
        "torch.ops.aten.lstm_cell": lambda: torch.ops.aten.lstm_cell(x, [h, c], w_ih, w_hh, b_ih, b_hh),
        "torch._VF.lstm_cell": lambda: torch._VF.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh),
        "torch.lstm_cell": lambda: torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh),
        "captured": lambda: captured(x, (h, c), w_ih, w_hh, b_ih, b_hh),
        "nn.LSTMCell": lambda: nn.LSTMCell(3, 4)(x, (h, c)),
        "nn.LSTM": lambda: nn.LSTM(3, 4)(x.unsqueeze(1)),
        "torch.ops.aten.lstm.input": lambda: torch.ops.aten.lstm.input(
            x.unsqueeze(1), [h[:1].unsqueeze(0), c[:1].unsqueeze(0)], [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0,
            False, False, False),
        "nn.GRUCell": lambda: nn.GRUCell(3, 4)(x, h),
        "nn.GRU": lambda: nn.GRU(3, 4)(x.unsqueeze(1)),
        "nn.RNN": lambda: nn.RNN(3, 4)(x.unsqueeze(1)),
        "torch.ops.aten.gru_cell.default": lambda: torch.ops.aten.gru_cell.default(
            x, h, w_ih[:12], w_hh[:12], b_ih[:12], b_hh[:12]),
        "torch._VF.rnn_tanh_cell": lambda: torch._VF.rnn_tanh_cell(x, h, w_ih[:4], w_hh[:4], b_ih[:4], b_hh[:4]),
    }
    with pytest.raises(AssertionError, match="must be written by hand"):
        with guard() as g:
            calls[route]()
    assert g.used


def test_guard_lets_ordinary_and_packing_ops_through(guard):
    x = torch.randn(5, 3, 2, requires_grad=True)
    with guard() as g:
        packed = pack_padded_sequence(x, torch.tensor([5, 2, 3]), enforce_sorted=False)
        padded, lengths = pad_packed_sequence(packed)
        seqs = pack_sequence([torch.randn(4, 2), torch.randn(1, 2)], enforce_sorted=False)
        y = torch.addmm(torch.zeros(3, 8), x[0], torch.randn(2, 8)).sigmoid().tanh()
        z = torch.nn.functional.dropout(y, 0.5, training=True) + torch.stack([y, y]).sum(0)
        z = torch.where(z > 0, z, y).chunk(4, dim=1)[0] * torch.einsum("bi,bi->b", y, y)[:, None]
        (padded.sum() + z.sum() + seqs.data.sum()).backward()
    assert not g.used


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


def _compare(cls, cfg, guard, train=False):
    """cls and nn.LSTM with the same weights: outputs and, after loss.backward(), every gradient."""
    kw, dtype = cfg["kw"], cfg["dtype"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nn.LSTM(**kw).to(dtype).train(train)
        me = cls(**kw).to(dtype).train(train)
    me.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(me.state_dict(), strict=True)
    I, H, D = kw["input_size"], kw["hidden_size"], 2 if kw["bidirectional"] else 1
    if cfg["kind"] == "packed":
        rng = random.Random(len(cfg["lens"]))
        lens = cfg["lens"][:]
        rng.shuffle(lens)                                   # unsorted, with a length-1 sequence
        x = pack_sequence([torch.randn(n, I, dtype=dtype) for n in lens], enforce_sorted=False)
        B = len(lens)
    elif cfg["kind"] == "unbatched":
        x, B = torch.randn(cfg["T"], I, dtype=dtype), None
    else:
        B = cfg["B"]
        x = torch.randn((B, cfg["T"], I) if kw["batch_first"] else (cfg["T"], B, I), dtype=dtype)
    hx = None
    if cfg["hx"]:
        shape = (kw["num_layers"] * D, H) if B is None else (kw["num_layers"] * D, B, H)
        hx = (torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype))
    res = []
    for m in (ref, me):
        data = (x.data if isinstance(x, PackedSequence) else x).detach().clone().requires_grad_()
        inp = x._replace(data=data) if isinstance(x, PackedSequence) else data
        h = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
        with guard() if m is me else warnings.catch_warnings():
            out, (h_n, c_n) = m(inp) if h is None else m(inp, h)
            od = out.data if isinstance(out, PackedSequence) else out
            gen = torch.Generator().manual_seed(5)
            loss = sum((t * torch.randn(t.shape, generator=gen, dtype=dtype)).sum() for t in (od, h_n, c_n))
            loss.backward()
        grads = [data.grad] + ([] if h is None else [h[0].grad, h[1].grad]) + [p.grad for p in m.parameters()]
        res.append((out, od, h_n, c_n, grads))
    tol = 1e-8 if dtype == torch.float64 else 1e-5
    (o1, d1, h1, c1, g1), (o2, d2, h2, c2, g2) = res
    assert type(o1) is type(o2)
    if isinstance(o1, PackedSequence):
        for f in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert torch.equal(getattr(o1, f), getattr(o2, f)), f
    for name, a, b in [("output", d1, d2), ("h_n", h1, h2), ("c_n", c1, c2)] + \
            [(f"grad {k}", a, b) for k, (a, b) in enumerate(zip(g1, g2))]:
        assert a.shape == b.shape, (name, a.shape, b.shape)
        assert (a - b).abs().max().item() <= tol, f"{name} differs by {(a - b).abs().max().item():.2e} ({cfg})"


@pytest.mark.parametrize("cls_name", ["HandLSTM", "FastHandLSTM", "FusedLSTM"])
@pytest.mark.parametrize("cfg", _configs(12, seed=2026), ids=lambda c: f"{c['kind']}-{c['dtype']}")
def test_matches_nn_lstm_values_and_gradients(ns, guard, cls_name, cfg):
    if cls_name == "FusedLSTM" and cfg["kind"] == "packed":
        pytest.skip("FusedLSTM takes tensors only (documented)")
    torch.manual_seed(0)
    _compare(ns[cls_name], cfg, guard)


@pytest.mark.parametrize("cls_name", ["HandLSTM", "FastHandLSTM", "FusedLSTM"])
def test_dropout_between_layers_only(ns, guard, cls_name):
    cls = ns[cls_name]
    torch.manual_seed(0)
    cfg = dict(kw=dict(input_size=3, hidden_size=4, num_layers=3, bias=True, batch_first=False,
                       bidirectional=True, dropout=1.0), kind="batched", hx=True, dtype=torch.float64, T=5, B=2)
    _compare(cls, cfg, guard, train=True)                   # p = 1 is deterministic
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    half = cls(3, 4, 2, dropout=0.5).double()
    assert not torch.allclose(half.train()(x)[0], half.eval()(x)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = cls(3, 4, 1, dropout=0.9).double()
    assert torch.equal(one.train()(x)[0], one.eval()(x)[0])


def test_fused_lstm_rejects_packed_input(ns):
    with pytest.raises(TypeError, match="PackedSequence"):
        ns["FusedLSTM"](2, 3)(pack_sequence([torch.randn(3, 2)]))


class _NoHostSync(TorchFunctionMode):
    """Fails on the calls that would synchronise with the GPU (and break a CUDA graph capture)."""
    SYNC = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy",
            "unique", "masked_select", "_local_scalar_dense", "any", "all"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.SYNC:
            raise AssertionError(f"{func.__name__} synchronises with the device: no CUDA graph capture")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_fused_lstm_can_be_captured_in_a_cuda_graph(ns, bidirectional):
    """No host synchronisation and no data-dependent Python control flow in forward or backward:
    the conditions make_graphed_callables needs (checked here without a GPU)."""
    model = ns["FusedLSTM"](3, 4, 2, bidirectional=bidirectional)
    x = torch.randn(5, 2, 3, requires_grad=True)
    with _NoHostSync():
        out, (h, c) = model(x)
        (out.sum() + h.sum() + c.sum()).backward()
    with pytest.raises(RuntimeError, match="CUDA"):
        ns["graph_lstm"](model, x)


def test_compiled_gate_math_matches_nn_lstm(ns):
    """The notebook's torch.compile line traces (fullgraph) and keeps values and gradients; the
    aot_eager backend stands in for the GPU's inductor here."""
    from grader.benchmarks import handlstm
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, 2, bidirectional=True).double()
    model = ns["FusedLSTM"](3, 4, 2, bidirectional=True).double()
    model.load_state_dict(ref.state_dict())
    model.pointwise = torch.compile(ns["lstm_pointwise"], backend="aot_eager", fullgraph=True, dynamic=False)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    want = [t.clone() for t in handlstm._fwd_bwd(ref, x)]
    got = handlstm._fwd_bwd(model, x)
    assert max((a - b).abs().max().item() for a, b in zip(got, want)) < 1e-8


# ------------------------------------------------------------------ the GPU code paths, on a fake GPU
# There is no GPU here: these run the notebook's and the benchmark's CUDA branches on the CPU, with
# torch.cuda's calls made harmless, graph_lstm an identity and torch.compile on the aot_eager
# backend. They catch what a CPU run never executes (names, shapes, bookkeeping, the figures'
# keys); the kernels themselves, the capture and the timings need the GPU check.
@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "fake GPU (the CPU)")
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "aot_eager"}))


def _fake_graph(model, sample_input):
    assert isinstance(sample_input, torch.Tensor) and sample_input.requires_grad
    return model


GPU_CELLS = ["profile-nn-lstm", "check-fused-lstm", "graph-demo", "compile-demo", "gpu-breakdown", "timing-figure"]
SMALLER = {"T, B, I, H, L = 28, 256, 28, 128, 2": "T, B, I, H, L = 3, 4, 5, 6, 2",
           "seq_lengths = [4, 8, 16, 32]": "seq_lengths = [2, 3]",
           "nn.LSTM(28, 128, 2, bidirectional=True)": "nn.LSTM(28, 16, 2, bidirectional=True)",
           "FusedLSTM(28, 128, 2, bidirectional=True)": "FusedLSTM(28, 16, 2, bidirectional=True)",
           'DEVICE.type == "cuda"': "True", 'device.type == "cuda"': "True"}


@pytest.mark.slow
def test_notebook_gpu_cells_run_on_a_fake_gpu(nb, fake_gpu, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    monkeypatch.setattr(plt, "show", lambda *a, **k: plt.close("all"))
    g = {"__name__": "__main__"}
    sources = {}
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        meta, tags = _meta(c), c.metadata.get("tags", [])
        sources[meta["grade_id"]] = c.source
        if "setup" in tags or "support" in tags or (meta.get("solution") and not meta.get("grade")):
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(c.source, meta["grade_id"], "exec"), g)
    g["graph_lstm"] = _fake_graph
    used = set()
    out = io.StringIO()
    for gid in GPU_CELLS:
        src = sources[gid]
        for old, new in SMALLER.items():
            if old in src:
                used.add(old)
                src = src.replace(old, new)
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(src, gid, "exec"), g)
    assert used == set(SMALLER), set(SMALLER) - used
    text = out.getvalue()
    for line in ("FusedLSTM in CUDA graphs vs nn.LSTM (cuDNN), float64", "FusedLSTM with the compiled gate math",
                 "GPU busy ms", "FusedLSTM + compile + graph"):
        assert line in text, (line, text[-2000:])
    assert "did not work" not in text, text
    diffs = [float(d) for d in re.findall(r"largest difference(?: in values and gradients)? (\S+)", text)]
    assert len(diffs) >= 2 and max(diffs) < 1e-5, text


def test_benchmark_gpu_code_runs_on_a_fake_gpu(ns, fake_gpu, monkeypatch):
    from grader.benchmarks import handlstm
    fake = dict(ns, graph_lstm=_fake_graph)
    monkeypatch.setattr(handlstm, "load_models", lambda: fake)
    small = dict(seq_len=3, batch=2, input_size=2, hidden_size=3, num_layers=2, rounds=2, warmup=1)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = handlstm.measure("cpu", **small, keys=["plain", "plain_graphed", "backward", "fused", "graphed"],
                               profile=True)
        compiled = handlstm.measure("cpu", **small, keys=["compiled"], profile=False)
        f64 = handlstm.graphed_f64_check(fake, torch.device("cpu"))
    assert not any(k.endswith("_error") for k in fig), fig
    for key in ("nnlstm_ms", "plain_ms", "plain_ratio", "plain_graphed_ms", "plain_graphed_ratio", "fused_ms",
                "fused_ratio", "graphed_ms", "graphed_ratio", "nnlstm_busy_ms", "nnlstm_kernels", "fused_busy_ms",
                "fused_kernels", "fused_gap_ms", "launch_overhead_ms", "arithmetic_gap_ms"):
        assert key in fig, key
    assert fig["max_rel_diff"] < 1e-5
    assert compiled["compiled_ms"] > 0 and compiled["compiled_max_rel_diff"] < 1e-5, compiled
    assert f64 <= 1e-8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_graphed_fused_lstm_matches_nn_lstm_on_cuda(ns):
    from grader.benchmarks import handlstm
    assert handlstm.graphed_f64_check(ns, torch.device("cuda")) <= 1e-8


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
def _run(nb, replace=None, grades=None, hidden=True):
    """Setup, helpers and answer cells (answer cells replaced by id), then the grade cells named
    (all by default); {grade_id: None or the error message}. Nothing may reach stderr."""
    g = {"__name__": "__main__"}
    results = {}
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        meta, tags = _meta(c), c.metadata.get("tags", [])
        src = c.source
        if "setup" in tags or "test-helpers" in tags:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(src, meta["grade_id"], "exec"), g)
        elif meta.get("solution") and not meta.get("grade"):
            exec(compile((replace or {}).get(meta["grade_id"], src), meta["grade_id"], "exec"), g)
        elif meta.get("grade") and (grades is None or meta["grade_id"] in grades):
            src = HIDDEN_MARKERS.sub("", src) if hidden else src.split("### BEGIN HIDDEN TESTS")[0]
            out, err = io.StringIO(), io.StringIO()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    exec(compile(src, meta["grade_id"], "exec"), g)
                results[meta["grade_id"]] = None
            except Exception as e:                       # noqa: BLE001
                results[meta["grade_id"]] = f"{type(e).__name__}: {e}"
            assert not err.getvalue(), f"{meta['grade_id']} wrote to stderr: {err.getvalue()[:300]}"
            if results[meta["grade_id"]] is None:
                assert out.getvalue().count("\n") == 1 and "visible tests" in out.getvalue(), out.getvalue()
    return results


def test_grade_cells_pass_on_the_solution(nb):
    results = _run(nb)
    assert set(results) == set(STAGES)
    assert all(v is None for v in results.values()), {k: v for k, v in results.items() if v}


def test_visible_tests_alone_pass_on_the_solution(nb):
    assert all(v is None for v in _run(nb, hidden=False).values())


def _wrong():
    alt = _alternatives()
    return [pytest.param(cell, src, grade, phrase, id=f"{k}-{grade}") for k, (cell, src, grade, phrase)
            in enumerate(alt.WRONG)]


@pytest.mark.parametrize("cell,src,grade,phrase", _wrong())
def test_wrong_answer_fails_its_stage_with_a_message(nb, cell, src, grade, phrase):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = _run(nb, replace={cell: src}, grades={grade})[grade]
    assert msg is not None, f"{grade} passes a wrong answer"
    assert msg.startswith("AssertionError") and phrase in msg, msg


# Mistakes confined to one stage of HandLSTM (or one helper): every other grade cell still passes.
ISOLATED = ["test_HandLSTM_init", "test_HandLSTM_dropout", "test_HandLSTM_unbatched", "test_HandLSTM_packed"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ISOLATED)
def test_a_stage_mistake_costs_only_that_stage(nb, stage):
    alt = _alternatives()
    isolated = [w for k, w in enumerate(alt.WRONG) if w[2] == stage and alt.WRONG_ALSO_FAILS[k] == []]
    assert isolated, f"no wrong answer confined to {stage} in the alternatives file"
    cell, src, grade, _ = isolated[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = _run(nb, replace={cell: src})
    assert {g for g, m in results.items() if m} == {grade}


def test_alternatives_file_covers_every_answer_cell(nb):
    alt = _alternatives()
    answers = {_meta(c)["grade_id"] for c in nb.cells if _meta(c).get("solution") and not _meta(c).get("grade")}
    assert set(alt.ALTERNATIVES) == answers
    assert all(len(v) >= 2 for v in alt.ALTERNATIVES.values())
    assert len(alt.WRONG) == len(alt.WRONG_ALSO_FAILS)


# ------------------------------------------------------------------ benchmark
def test_bench_registered_and_runs_on_a_tiny_shape():
    from grader.benchmarks import handlstm
    registry = bench.discover()
    assert {"handlstm-cpu", "handlstm-gpu"} <= set(registry)
    with contextlib.redirect_stdout(io.StringIO()):
        fig = handlstm.measure("cpu", seq_len=4, batch=3, input_size=2, hidden_size=3, num_layers=2,
                               rounds=2, warmup=1)
    for key in ("handlstm_ms", "nnlstm_ms", "ratio", "plain_ms", "plain_ratio", "fused_ms", "fused_ratio",
                "backward_ms", "backward_ratio"):
        assert fig[key] > 0, key
    assert fig["handlstm_ms"] == fig["backward_ms"] and "FastHandLSTM" in fig["handlstm_model"]
    assert abs(fig["ratio"] - fig["handlstm_ms"] / fig["nnlstm_ms"]) < 0.01 * fig["ratio"] + 1e-3
    assert fig["max_rel_diff"] < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_gpu_bench_skips_without_cuda(capsys):
    registry = bench.discover()
    with pytest.raises(bench.Skip, match="no CUDA"):
        registry["handlstm-gpu"]()


def test_gpu_bench_child_process_reports_failures_as_figures():
    """The child that handlstm-gpu starts works end to end (here on the CPU, where the CUDA graph
    fails and is reported, not raised)."""
    from grader.benchmarks import handlstm
    tiny = dict(seq_len=3, batch=2, input_size=2, hidden_size=3, num_layers=1)
    fig = handlstm._run_child("cpu", ["fused", "graphed"], False, 240, tiny)
    assert fig["fused_ms"] > 0 and fig["fused_max_rel_diff"] < 1e-5, fig
    assert "CUDA" in fig["graphed_error"], fig
