"""Notebook 07 (bug clinic): reference fixes against PyTorch over random configurations, and the
buggy functions shown in the notebook really are wrong where the student sees them.

Each exercise comes with a locked buggy function (cells tagged "buggy"). For every pair we check
  * the reference fix equals the truth computed by torch modules (weights copied in) over random
    configurations;
  * the buggy function differs from that truth on the notebook's visible configuration (otherwise
    the exercise would teach nothing);
  * the notebook's own grade cell passes with the fix, and fails — in its VISIBLE part, with an
    AssertionError, i.e. a message for the student — when the buggy function is submitted, and when
    the untouched stub (NotImplementedError) is submitted.
"""
import json
import random
import warnings

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_packed_sequence

from grader import paths, solution_code

NAME = "08_bug_clinic"

# exercise name -> buggy twin shown in the notebook
PAIRS = {
    "bilstm_features": "bilstm_features_buggy",
    "decoder_h0": "decoder_h0_buggy",
    "SequenceClassifier": "SequenceClassifierBuggy",
    "run_time_major": "run_time_major_buggy",
    "pack_batch": "pack_batch_buggy",
    "last_real_step": "last_real_step_buggy",
    "gru_cell": "gru_cell_buggy",
    "stacked_rnn": "stacked_rnn_buggy",
}


@pytest.fixture(scope="module")
def ns():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return solution_code.load(NAME, extra_tags=("buggy", "support"))


@pytest.fixture(scope="module")
def grade_cells():
    nb = json.loads(paths.solution_path(NAME).read_text())
    cells = {}
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and cell["cell_type"] == "code":
            src = cell["source"]
            cells[meta["grade_id"]] = "".join(src) if isinstance(src, list) else src
    return cells


def _h(state):
    return state[0] if isinstance(state, tuple) else state


def _copy_layer(dst, src, k_dst, k_src):
    for name, p in dst.named_parameters():
        if f"_l{k_dst}" in name:
            p.data.copy_(getattr(src, name.replace(f"_l{k_dst}", f"_l{k_src}")))


# ----------------------------------------------------------------------------- truths ----------
def truth_bilstm_features(rnn, x):
    """Top layer's forward state after the last step, backward state after step 0 — read from the
    output of a one-layer copy of the top layer run on the layer below's output."""
    out, _ = rnn(x)
    H = getattr(rnn, "proj_size", 0) or rnn.hidden_size
    seq = out if rnn.batch_first else out.transpose(0, 1)
    return torch.cat([seq[:, -1, :H], seq[:, 0, H:]], dim=1)


def truth_per_layer(enc, x):
    """[(fwd, bwd)] final states per layer of a batch-first bidirectional encoder, from one-layer
    copies (never from enc's h_n)."""
    finals, inp, H = [], x, enc.hidden_size
    for k in range(enc.num_layers):
        one = type(enc)(inp.shape[-1], H, bidirectional=True, batch_first=True, bias=enc.bias).to(x.dtype)
        _copy_layer(one, enc, 0, k)
        inp, _ = one(inp)
        finals.append((inp[:, -1, :H], inp[:, 0, H:]))
    return finals


def truth_alone(rnn, x, lengths, batch_first=True):
    """h_n of every sequence run alone, stacked to (L*D, B, H)."""
    cols = []
    for b, n in enumerate(lengths):
        xb = x[b:b + 1, :n] if batch_first else x[:n, b:b + 1]
        cols.append(_h(rnn(xb)[1])[:, 0])
    return torch.stack(cols, dim=1)


def stack_twin(layers):
    f = layers[0]
    twin = type(f)(f.input_size, f.hidden_size, len(layers), bias=f.bias, batch_first=f.batch_first,
                   bidirectional=f.bidirectional).to(next(f.parameters()).dtype)
    for k, layer in enumerate(layers):
        for name, p in layer.named_parameters():
            getattr(twin, name.replace("_l0", f"_l{k}")).data.copy_(p)
    return twin


def _configs(seed, n):
    rng = random.Random(seed)
    return [dict(L=rng.randint(1, 4), H=rng.randint(1, 6), I=rng.randint(1, 5), B=rng.randint(1, 4),
                 T=rng.randint(1, 8), bf=rng.random() < 0.5, lstm=rng.random() < 0.5,
                 bias=rng.random() < 0.8, dtype=rng.choice([torch.float32, torch.float64]))
            for _ in range(n)]


# ----------------------------------------------------------- reference fixes vs torch -----------
@pytest.mark.parametrize("cfg", _configs(1, 6))
def test_bilstm_features_random(ns, cfg):
    torch.manual_seed(0)
    cls = nn.LSTM if cfg["lstm"] else nn.GRU
    rnn = cls(cfg["I"], cfg["H"], cfg["L"], bias=cfg["bias"], batch_first=cfg["bf"], bidirectional=True).to(cfg["dtype"])
    shape = (cfg["B"], cfg["T"], cfg["I"]) if cfg["bf"] else (cfg["T"], cfg["B"], cfg["I"])
    x = torch.randn(*shape, dtype=cfg["dtype"])
    with torch.no_grad():
        got = ns["bilstm_features"](rnn, x)
        want = truth_bilstm_features(rnn, x)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("cfg", _configs(2, 6))
def test_decoder_h0_random(ns, cfg):
    torch.manual_seed(0)
    cls = nn.LSTM if cfg["lstm"] else nn.GRU
    enc = cls(cfg["I"], cfg["H"], cfg["L"], bias=cfg["bias"], batch_first=True, bidirectional=True).to(cfg["dtype"])
    x = torch.randn(cfg["B"], cfg["T"], cfg["I"], dtype=cfg["dtype"])
    with torch.no_grad():
        got = ns["decoder_h0"](_h(enc(x)[1]), cfg["L"])
        want = torch.stack([f + b for f, b in truth_per_layer(enc, x)])
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("L,bidir,proj", [(1, False, 0), (1, True, 0), (2, False, 0), (2, True, 0),
                                          (3, True, 0), (4, False, 0), (2, True, 2), (3, False, 3)])
def test_sequence_classifier(ns, L, bidir, proj):
    torch.manual_seed(0)
    model = ns["SequenceClassifier"](3, 5, L, 4, bidirectional=bidir, proj_size=proj)
    D, Hout = (2 if bidir else 1), (proj or 5)
    assert model.head.in_features == D * Hout
    x = torch.randn(2, 6, 3)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feats = truth_bilstm_features(model.rnn, x) if bidir else model.rnn(x)[0][:, -1]
        assert torch.allclose(model(x), model.head(feats), atol=1e-6)


@pytest.mark.parametrize("cfg", _configs(4, 6))
def test_run_time_major_random(ns, cfg):
    torch.manual_seed(0)
    cls = nn.LSTM if cfg["lstm"] else nn.GRU
    rnn = cls(cfg["I"], cfg["H"], cfg["L"], bias=cfg["bias"], bidirectional=cfg["bf"]).to(cfg["dtype"])
    twin = cls(cfg["I"], cfg["H"], cfg["L"], bias=cfg["bias"], bidirectional=cfg["bf"], batch_first=True).to(cfg["dtype"])
    twin.load_state_dict(rnn.state_dict())
    x = torch.randn(cfg["B"], cfg["T"], cfg["I"], dtype=cfg["dtype"])
    with torch.no_grad():
        assert torch.allclose(ns["run_time_major"](rnn, x), twin(x)[0], atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_pack_batch_random(ns, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    B, T = rng.randint(1, 5), rng.randint(1, 7)
    lengths = [rng.randint(1, T) for _ in range(B)]
    bf = rng.random() < 0.5
    cls = rng.choice([nn.LSTM, nn.GRU, nn.RNN])
    rnn = cls(3, 4, rng.randint(1, 3), batch_first=bf, bidirectional=rng.random() < 0.5)
    x = torch.randn(B, T, 3) if bf else torch.randn(T, B, 3)
    forms = [lengths, tuple(lengths), torch.tensor(lengths), torch.tensor(lengths, dtype=torch.int32),
             ns["gpu_lookalike"](lengths)]
    want = truth_alone(rnn, x, lengths, bf)
    with torch.no_grad():
        for form in forms:
            packed = ns["pack_batch"](x, form, batch_first=bf)
            assert torch.allclose(_h(rnn(packed)[1]), want, atol=1e-6), type(form)
            _, back_len = pad_packed_sequence(packed, batch_first=bf)
            assert back_len.tolist() == lengths


def test_gpu_lookalike_behaves_like_a_cuda_tensor(ns):
    """The stand-in used by the notebook is rejected by the packing kernel exactly where a CUDA tensor
    is, and turns into a plain CPU tensor/list exactly where a CUDA tensor would."""
    pack = ns["pack_padded_sequence"]
    x = torch.randn(3, 4, 2)
    fake = ns["gpu_lookalike"]([4, 2, 1])
    assert fake.device.type == "cuda" and fake.is_cuda
    with pytest.raises(RuntimeError, match="CPU int64"):
        pack(x, fake, batch_first=True)
    with pytest.raises(RuntimeError, match="CPU int64"):
        pack(x, fake.to(torch.int64), batch_first=True, enforce_sorted=False)
    for ok in (fake.cpu(), fake.to("cpu"), fake.to(torch.device("cpu")), fake.tolist(), [int(v) for v in fake]):
        pack(x, ok, batch_first=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_pack_batch_real_cuda_lengths(ns):
    torch.manual_seed(0)
    rnn = nn.GRU(3, 4, batch_first=True).cuda()
    x = torch.randn(4, 6, 3, device="cuda")
    lengths = torch.tensor([2, 6, 5, 1], device="cuda")
    with pytest.raises(RuntimeError):
        ns["pack_batch_buggy"](x, lengths.sort(descending=True).values)
    with torch.no_grad():
        got = rnn(ns["pack_batch"](x, lengths))[1]
        want = truth_alone(rnn, x, lengths.tolist())
    # cuDNN may use TF32 (about 1e-4 here on an H100); a wrong row or order is off by ~1e-1
    assert torch.allclose(got, want, atol=2e-3)


@pytest.mark.parametrize("cfg", _configs(6, 6))
def test_last_real_step_random(ns, cfg):
    torch.manual_seed(0)
    rng = random.Random(cfg["T"] * 31 + cfg["B"])
    cls = nn.LSTM if cfg["lstm"] else nn.GRU
    rnn = cls(cfg["I"], cfg["H"], cfg["L"], bias=cfg["bias"], batch_first=True).to(cfg["dtype"])
    x = torch.randn(cfg["B"], cfg["T"], cfg["I"], dtype=cfg["dtype"])
    lengths = [rng.randint(1, cfg["T"]) for _ in range(cfg["B"])]
    with torch.no_grad():
        got = ns["last_real_step"](rnn(x)[0], torch.tensor(lengths))
        assert torch.allclose(got, truth_alone(rnn, x, lengths)[-1], atol=1e-6)


@pytest.mark.parametrize("cfg", _configs(7, 6))
def test_gru_cell_random(ns, cfg):
    torch.manual_seed(0)
    cell = nn.GRUCell(cfg["I"], cfg["H"], bias=cfg["bias"]).to(cfg["dtype"])
    if cfg["bias"]:
        with torch.no_grad():
            cell.bias_hh.uniform_(-1, 1)
    x, h = torch.randn(cfg["B"], cfg["I"], dtype=cfg["dtype"]), torch.randn(cfg["B"], cfg["H"], dtype=cfg["dtype"])
    with torch.no_grad():
        got = ns["gru_cell"](x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        assert torch.allclose(got, cell(x, h), atol=1e-6)


@pytest.mark.parametrize("cfg", _configs(8, 8))
def test_stacked_rnn_random(ns, cfg):
    torch.manual_seed(0)
    cls = nn.LSTM if cfg["lstm"] else nn.GRU
    D = 2 if cfg["bf"] else 1                      # reuse the coin: bidirectional when bf
    layers = [cls(cfg["I"] if k == 0 else D * cfg["H"], cfg["H"], bias=cfg["bias"], bidirectional=D == 2,
                  batch_first=cfg["bf"]).to(cfg["dtype"]) for k in range(cfg["L"])]
    x = torch.randn(*((cfg["B"], cfg["T"]) if cfg["bf"] else (cfg["T"], cfg["B"])), cfg["I"], dtype=cfg["dtype"])
    shape = (cfg["L"] * D, cfg["B"], cfg["H"])
    h0 = None
    if cfg["T"] % 2:
        h0 = torch.randn(*shape, dtype=cfg["dtype"])
        if cls is nn.LSTM:
            h0 = (h0, torch.randn(*shape, dtype=cfg["dtype"]))
    with torch.no_grad():
        out, hn = ns["stacked_rnn"](layers, x, h0)
        want_out, want_hn = stack_twin(layers)(x, h0)
    assert torch.allclose(out, want_out, atol=1e-6)
    for g, w in zip(hn if isinstance(hn, tuple) else (hn,), want_hn if isinstance(want_hn, tuple) else (want_hn,)):
        assert torch.allclose(g, w, atol=1e-6)


def test_gru_cell_reference_is_hand_written(ns, grade_cells):
    """The hidden test's guard accepts the reference (it calls no built-in kernel) and catches
    nn.GRUCell."""
    src = grade_cells["test_gru_cell"]
    guard_src = src[src.index("from torch.overrides"):src.index("torch.manual_seed(702)")]
    g = {"torch": torch}
    exec(guard_src, g)
    cell = nn.GRUCell(3, 4)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    with torch.no_grad(), g["_NoBuiltinRNN"]() as guard:
        ns["gru_cell"](x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    assert not guard.used
    with pytest.raises(AssertionError, match="by hand"):
        with torch.no_grad(), g["_NoBuiltinRNN"]():
            cell(x, h)


# ------------------------------------------------- every buggy function is really wrong --------
def test_buggy_functions_differ_from_truth_on_visible_configs(ns):
    torch.manual_seed(101)
    rnn = nn.LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 6, 5)
    with torch.no_grad():
        assert not torch.allclose(ns["bilstm_features_buggy"](rnn, x), truth_bilstm_features(rnn, x), atol=1e-3)

        torch.manual_seed(201)
        enc = nn.GRU(4, 3, num_layers=2, bidirectional=True, batch_first=True)
        x = torch.randn(2, 5, 4)
        want = torch.stack([f + b for f, b in truth_per_layer(enc, x)])
        assert not torch.allclose(ns["decoder_h0_buggy"](enc(x)[1], 2), want, atol=1e-3)

        for L, bidir in [(3, True), (2, False)]:          # the visible neighbours of (2, True)
            model = ns["SequenceClassifierBuggy"](3, 6, L, 5, bidirectional=bidir)
            with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
                model(torch.randn(4, 7, 3))

        torch.manual_seed(401)
        rnn = nn.GRU(2, 3)
        x = torch.randn(3, 4, 2)
        want = rnn(x.transpose(0, 1))[0].transpose(0, 1)
        assert not torch.allclose(ns["run_time_major_buggy"](rnn, x), want, atol=1e-3)

        x = torch.randn(4, 6, 3)
        for lengths in (torch.tensor([3, 6, 1, 4]), ns["gpu_lookalike"]([6, 4, 3, 1])):
            with pytest.raises(RuntimeError):
                ns["pack_batch_buggy"](x, lengths)

        torch.manual_seed(601)
        gru = nn.GRU(3, 4, batch_first=True)
        x, lengths = torch.randn(4, 7, 3), [7, 3, 5, 1]
        assert not torch.allclose(ns["last_real_step_buggy"](gru(x)[0], lengths),
                                  truth_alone(gru, x, lengths)[-1], atol=1e-3)

        torch.manual_seed(701)
        cell = nn.GRUCell(4, 3)
        x, h = torch.randn(5, 4), torch.randn(5, 3)
        buggy = ns["gru_cell_buggy"](x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        assert not torch.allclose(buggy, cell(x, h), atol=1e-3)

        torch.manual_seed(801)
        layers = [nn.GRU(5, 8), nn.GRU(8, 8), nn.GRU(8, 8)]
        x = torch.randn(12, 4, 5)
        out, _ = ns["stacked_rnn_buggy"](layers, x)
        assert not torch.allclose(out, stack_twin(layers)(x)[0], atol=1e-3)


# ------------------------------------------------------ the grade cells themselves ------------
def _run_cell(source, ns, name, impl):
    g = {k: v for k, v in ns.items() if k not in PAIRS}
    g[name] = impl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(source, f"<grade cell test_{name}>", "exec"), g)


def _visible(source):
    return source.split("### BEGIN HIDDEN TESTS")[0]


@pytest.mark.parametrize("name", list(PAIRS))
def test_grade_cell_passes_with_reference(ns, grade_cells, name):
    _run_cell(grade_cells[f"test_{name}"], ns, name, ns[name])


@pytest.mark.parametrize("name", list(PAIRS))
def test_visible_grade_cell_rejects_buggy_version(ns, grade_cells, name, capsys):
    with pytest.raises(AssertionError) as info:
        _run_cell(_visible(grade_cells[f"test_{name}"]), ns, name, ns[PAIRS[name]])
    assert len(str(info.value)) > 40, "the visible test must explain the symptom"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", list(PAIRS))
def test_grade_cell_rejects_stub(ns, grade_cells, name):
    def stub(*args, **kwargs):
        raise NotImplementedError()

    class Stub(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        _run_cell(grade_cells[f"test_{name}"], ns, name, Stub if name[0].isupper() else stub)


def test_symptom_messages_name_the_cause(ns, grade_cells):
    """The visible messages for the buggy versions say what is wrong, in the student's terms."""
    expect = {
        "bilstm_features": "ONE step",
        "decoder_h0": "BACKWARD",
        "SequenceClassifier": "num_layers does not enter",
        "run_time_major": "transpose",
        "pack_batch": "enforce_sorted=False",
        "last_real_step": "PADDED",
        "gru_cell": "INSIDE",
        "stacked_rnn": "first steps",
    }
    for name, phrase in expect.items():
        with pytest.raises(AssertionError) as info:
            _run_cell(_visible(grade_cells[f"test_{name}"]), ns, name, ns[PAIRS[name]])
        assert phrase in str(info.value), (name, str(info.value))


def test_grade_cells_reject_shortcuts_that_defeat_the_exercise(ns, grade_cells):
    """gru_cell through nn.GRUCell's kernel and stacked_rnn through a multi-layer module built from
    the layers' weights give the right numbers but skip the point: the hidden tests catch both."""
    def gru_cell_builtin(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
        return torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)

    def stacked_rnn_twin(layers, x, h0=None):
        return stack_twin(layers)(x, h0)

    for name, impl, phrase in [("gru_cell", gru_cell_builtin, "by hand"),
                               ("stacked_rnn", stacked_rnn_twin, "call each layer once")]:
        _run_cell(_visible(grade_cells[f"test_{name}"]), ns, name, impl)      # right numbers...
        with pytest.raises(AssertionError, match=phrase):                     # ...wrong route
            _run_cell(grade_cells[f"test_{name}"], ns, name, impl)
