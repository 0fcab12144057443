"""Notebook 04 (bidirectional output layout, packed sequences): the reference code against PyTorch.

Ground truth is never read off the layout being tested: every (layer, direction) of a module is
re-run as its own one-layer, one-direction copy with the weights copied in, one sequence at a
time (so padding cannot leak in). On top of that, the notebook's grade cells are executed
directly (no nbgrader; the test-helpers cell first): they pass on the reference and on the
alternative answers of tests/alternatives/, and known wrong answers fail them with the message
that names the mistake. The claims the notebook makes about PyTorch itself (what
pack_padded_sequence accepts as lengths, the documentation's view recipe) are checked against the
installed torch.
"""
import importlib.util
import random

import nbformat
import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence, pack_sequence,
                                pad_packed_sequence, pad_sequence)

from grader import paths, solution_code

NAME = "04_bidirectional_layout"
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(scope="module")
def ref():
    torch.set_num_threads(1)
    return solution_code.load("04_bidirectional_layout")


# ---------------------------------------------------------------- independent ground truth

def copies_truth(rnn, seqs):
    """For each sequence x (L, in): outs[l][d] (L, H) and finals[l][d] = (h,) or (h, c), from
    one-layer one-direction copies of `rnn`."""
    result = []
    for x in seqs:
        outs, finals = [], []
        for layer in range(rnn.num_layers):
            o_l, f_l = [], []
            for d in range(2 if rnn.bidirectional else 1):
                cp = type(rnn)(x.shape[-1], rnn.hidden_size, bias=rnn.bias).to(x)
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                with torch.no_grad():
                    for n, p in cp.named_parameters():
                        p.copy_(getattr(rnn, n[:-3] + suffix))
                    o, s = cp(x.flip(0) if d else x)
                o_l.append(o.flip(0) if d else o)
                f_l.append(tuple(t[0] for t in s) if isinstance(s, tuple) else (s[0],))
            outs.append(o_l)
            finals.append(f_l)
            x = torch.cat(o_l, -1)
        result.append((outs, finals))
    return result


def random_module(seed, bidirectional=None):
    r = random.Random(seed)
    torch.manual_seed(seed)
    mode = r.choice([nn.LSTM, nn.GRU])
    bidir = r.random() < 0.6 if bidirectional is None else bidirectional
    rnn = mode(r.randint(1, 5), r.randint(1, 6), num_layers=r.randint(1, 4), bias=r.random() < 0.7,
               batch_first=r.random() < 0.5, bidirectional=bidir)
    dtype = r.choice([torch.float32, torch.float64])
    return rnn.to(dtype), dtype, r


def random_lengths(r, with_one=True):
    lengths = [r.randint(1, 7) for _ in range(r.randint(1, 6))]
    if with_one:
        lengths[r.randrange(len(lengths))] = 1
    return lengths


def assert_close(got, want, tol, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    assert diff <= tol, f"{what}: max difference {diff:.2e}"


# ---------------------------------------------------------------- reference vs PyTorch

@pytest.mark.parametrize("seed", range(30))
def test_split_directions_matches_direction_copies(ref, seed):
    rnn, dtype, r = random_module(seed, bidirectional=True)
    T, B = r.randint(1, 6), r.randint(1, 4)
    seqs = [torch.randn(T, rnn.input_size, dtype=dtype) for _ in range(B)]
    dim = 0 if rnn.batch_first else 1
    with torch.no_grad():
        out = rnn(torch.stack(seqs, dim))[0]
    truth = copies_truth(rnn, seqs)
    fwd, bwd = ref["split_directions"](out, rnn.hidden_size)
    for d, got in enumerate((fwd, bwd)):
        assert_close(got, torch.stack([t[0][-1][d] for t in truth], dim), TOL[dtype], f"direction {d}")
    # unbatched output (T, 2H) and packed .data (sum of lengths, 2H) split the same way
    with torch.no_grad():
        out1 = rnn(seqs[0])[0]
    f1, b1 = ref["split_directions"](out1, rnn.hidden_size)
    assert_close(f1, truth[0][0][-1][0], TOL[dtype], "unbatched forward")
    assert_close(b1, truth[0][0][-1][1], TOL[dtype], "unbatched backward")
    with pytest.raises(ValueError):
        ref["split_directions"](out[..., :rnn.hidden_size], rnn.hidden_size)


@pytest.mark.parametrize("seed", range(100, 130))
def test_h_n_by_layer_and_top_layer_final_match_direction_copies(ref, seed):
    rnn, dtype, r = random_module(seed)
    T, B = r.randint(1, 5), r.randint(1, 4)
    seqs = [torch.randn(T, rnn.input_size, dtype=dtype) for _ in range(B)]
    with torch.no_grad():
        state = rnn(torch.stack(seqs, 0 if rnn.batch_first else 1))[1]
    state = state if isinstance(state, tuple) else (state,)
    truth = copies_truth(rnn, seqs)
    D = 2 if rnn.bidirectional else 1
    for k, s in enumerate(state):                      # h_n, and c_n for an LSTM
        want = torch.stack([torch.stack([torch.stack([t[1][l][d][k] for t in truth])
                                         for d in range(D)]) for l in range(rnn.num_layers)])
        assert_close(ref["h_n_by_layer"](s, rnn.num_layers, rnn.bidirectional), want, TOL[dtype],
                     f"h_n_by_layer state {k}")
    top = ref["top_layer_final"](state[0], rnn.num_layers, rnn.bidirectional)
    want = torch.stack([torch.cat([t[1][-1][d][0] for d in range(D)]) for t in truth])
    assert_close(top, want, TOL[dtype], "top_layer_final")
    with pytest.raises(ValueError):
        ref["h_n_by_layer"](state[0], rnn.num_layers + 1, rnn.bidirectional)


@pytest.mark.parametrize("seed", range(200, 230))
def test_packed_batch_and_final_from_output_match_direction_copies(ref, seed):
    rnn, dtype, r = random_module(seed)
    lengths = random_lengths(r)
    seqs = [torch.randn(n, rnn.input_size, dtype=dtype) for n in lengths]
    packed = ref["make_packed_batch"](seqs)
    assert isinstance(packed, PackedSequence)
    expected = pack_sequence(seqs, enforce_sorted=False)
    for field in ("data", "batch_sizes", "sorted_indices", "unsorted_indices"):
        assert torch.equal(getattr(packed, field), getattr(expected, field)), field
    assert packed.batch_sizes.dtype == torch.int64 and packed.batch_sizes.device.type == "cpu"
    with torch.no_grad():
        out_p, state = rnn(packed)
    h_n = state[0] if isinstance(state, tuple) else state
    extra = r.randint(0, 2)
    out, lens = pad_packed_sequence(out_p, batch_first=rnn.batch_first, total_length=max(lengths) + extra)
    assert lens.tolist() == lengths
    truth = copies_truth(rnn, seqs)
    D = 2 if rnn.bidirectional else 1
    want = torch.stack([torch.cat([t[0][-1][d][n - 1 if d == 0 else 0] for d in range(D)])
                        for t, n in zip(truth, lengths)])
    # the spec's claim: reading output at length-1 / 0 equals the packed run's h_n
    assert_close(ref["top_layer_final"](h_n, rnn.num_layers, rnn.bidirectional), want, TOL[dtype],
                 "top_layer_final of the packed run")
    for arg in (lens, lengths, torch.tensor(lengths, dtype=torch.int32)):
        got = ref["final_from_output"](out, arg, batch_first=rnn.batch_first,
                                       bidirectional=rnn.bidirectional)
        assert_close(got, want, TOL[dtype], f"final_from_output with lengths as {type(arg).__name__}")
    # padded steps of the unpacked output are zeros, so output[-1] is not the final state
    time_major = out.transpose(0, 1) if rnn.batch_first else out
    for b, n in enumerate(lengths):
        assert (time_major[n:, b] == 0).all()


@pytest.mark.parametrize("seed", range(300, 310))
def test_final_from_output_without_lengths_equals_top_layer_final(ref, seed):
    rnn, dtype, r = random_module(seed)
    T, B = r.randint(1, 6), r.randint(1, 4)
    x = torch.randn(B, T, rnn.input_size, dtype=dtype)
    with torch.no_grad():
        out, state = rnn(x if rnn.batch_first else x.transpose(0, 1))
    h_n = state[0] if isinstance(state, tuple) else state
    assert_close(ref["final_from_output"](out, None, rnn.batch_first, rnn.bidirectional),
                 ref["top_layer_final"](h_n, rnn.num_layers, rnn.bidirectional), TOL[dtype],
                 "final_from_output(lengths=None) vs top_layer_final")


def test_unpacked_padded_batch_gives_a_different_h_n():
    torch.manual_seed(0)
    rnn = nn.LSTM(3, 4, bidirectional=True)
    seqs = [torch.randn(n, 3) for n in (2, 5, 1)]
    with torch.no_grad():
        _, (h_packed, _) = rnn(pack_sequence(seqs, enforce_sorted=False))
        _, (h_padded, _) = rnn(pad_sequence(seqs))
    assert not torch.allclose(h_packed, h_padded, atol=1e-3)
    assert torch.allclose(h_packed[:, 1], h_padded[:, 1], atol=1e-6)   # the full-length sequence agrees


def test_make_packed_batch_keeps_data_device_and_cpu_lengths(ref):
    seqs = [torch.zeros(n, 3, device="meta") for n in (2, 7, 1)]
    with pytest.raises(RuntimeError, match="1D CPU int64"):        # what the notebook warns about
        pack_padded_sequence(pad_sequence(seqs), torch.tensor([2, 7, 1], device="meta"),
                             enforce_sorted=False)
    packed = ref["make_packed_batch"](seqs)
    assert packed.data.device.type == "meta"
    assert packed.batch_sizes.tolist() == [3, 2, 1, 1, 1, 1, 1]
    if torch.cuda.is_available():
        packed = ref["make_packed_batch"]([s.to("cuda") for s in seqs])
        assert packed.data.is_cuda


# ---------------------------------------------------------------- claims about PyTorch itself

def test_lengths_may_be_a_list_or_a_cpu_tensor_of_any_dtype():
    """Section 4: lengths on the CPU, any dtype, cast to int64 (fractions truncated)."""
    x = torch.randn(5, 3, 2)
    want = pack_padded_sequence(x, torch.tensor([3, 5, 1]), enforce_sorted=False)
    for lengths in ([3, 5, 1], (3, 5, 1), [3.7, 5.2, 1.9], torch.tensor([3, 5, 1], dtype=torch.int32),
                    torch.tensor([3.0, 5.0, 1.0]), torch.tensor([3, 5, 1], dtype=torch.uint8)):
        got = pack_padded_sequence(x, lengths, enforce_sorted=False)
        assert torch.equal(got.batch_sizes, want.batch_sizes), lengths
        assert torch.equal(got.data, want.data), lengths
    with pytest.raises(RuntimeError, match="1D CPU int64 tensor, but got 1D meta Long tensor"):
        pack_padded_sequence(x.to("meta"), torch.tensor([3, 5, 1], device="meta"), enforce_sorted=False)
    with pytest.raises(RuntimeError, match="sorted in decreasing order"):
        pack_padded_sequence(x, [3, 5, 1])


@pytest.mark.parametrize("mode", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_documentations_view_recipe_holds_for_time_major_only(mode, dtype):
    torch.manual_seed(0)
    T, B, H = 5, 3, 4
    bf = mode(2, H, bidirectional=True, batch_first=True).to(dtype)
    tm = mode(2, H, bidirectional=True).to(dtype)
    tm.load_state_dict(bf.state_dict())
    x = torch.randn(B, T, 2, dtype=dtype)
    with torch.no_grad():
        out_bf, out_tm = bf(x)[0], tm(x.transpose(0, 1))[0]
    assert torch.equal(out_tm.view(T, B, 2, H)[:, :, 0], out_tm[..., :H])
    assert not out_bf.is_contiguous()                    # the notebook says view refuses it
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        out_bf.view(T, B, 2, H)
    assert not torch.allclose(out_bf.reshape(T, B, 2, H)[:, :, 0], out_bf[..., :H].transpose(0, 1))
    assert torch.equal(out_bf.view(B, T, 2, H)[:, :, 0], out_bf[..., :H])
    with torch.no_grad():
        one = bf(x[:1])[0]
    assert torch.equal(one.reshape(T, 1, 2, H)[:, :, 0], one[..., :H].transpose(0, 1))
    packed = pack_sequence([x[0], x[1, :2], x[2, :4]], enforce_sorted=False)
    with torch.no_grad():
        padded = pad_packed_sequence(bf(packed)[0], batch_first=True)[0]
    assert padded.is_contiguous()                        # ... and view runs silently on this one
    assert not torch.allclose(padded.view(T, B, 2, H)[:, :, 0], padded[..., :H].transpose(0, 1))


# ---------------------------------------------------------------- the grade cells themselves

def notebook_cells(path):
    return nbformat.read(path, as_version=4).cells


def grade_cells():
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in notebook_cells(paths.solution_path(NAME))
            if c.metadata.get("nbgrader", {}).get("grade")}


GRADE_IDS = ["test_split_directions", "test_split_directions_2d", "test_split_directions_error",
             "test_h_n_by_layer", "test_h_n_by_layer_error", "test_top_layer_final",
             "test_top_layer_final_unidirectional", "test_make_packed_batch",
             "test_make_packed_batch_device", "test_final_from_output",
             "test_final_from_output_lengths", "test_final_from_output_batch_first",
             "test_final_from_output_unidirectional"]


def test_grade_cells_are_the_expected_ones():
    assert list(grade_cells()) == GRADE_IDS


def reference_namespace():
    return solution_code.load(NAME, extra_tags=("test-helpers",))


def run_grade_cell(grade_id, ns=None, **overrides):
    ns = reference_namespace() if ns is None else ns
    ns.update(overrides)
    exec(compile(grade_cells()[grade_id], f"<{grade_id}>", "exec"), ns)


@pytest.mark.parametrize("grade_id", GRADE_IDS)
def test_grade_cell_passes_on_the_reference(grade_id, capsys):
    torch.set_num_threads(1)
    run_grade_cell(grade_id)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "(visible tests)" in out, out   # one success line


def test_untouched_student_copy_fails_every_grade_cell():
    ns = {}
    failed = []
    for cell in notebook_cells(paths.student_path(NAME)):
        meta = cell.metadata.get("nbgrader", {})
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or not ("setup" in tags or "test-helpers" in tags
                                            or meta.get("solution") or meta.get("grade")):
            continue
        try:
            exec(compile(cell.source, "<student>", "exec"), ns)
        except (NotImplementedError, AssertionError):
            failed.append(meta.get("grade_id"))
    assert failed == GRADE_IDS, failed


def load_alternatives():
    path = paths.ROOT / "tests" / "alternatives" / f"nb{NAME}.py"
    spec = importlib.util.spec_from_file_location("nb04_alternatives", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ALTERNATIVES = load_alternatives()
ANSWER_GRADE_CELLS = {answer: [g for g in GRADE_IDS if g == f"test_{answer}" or g.startswith(f"test_{answer}_")]
                      for answer in ALTERNATIVES.ALTERNATIVES}


@pytest.mark.parametrize("answer,index", [(a, i) for a, srcs in ALTERNATIVES.ALTERNATIVES.items()
                                          for i in range(len(srcs))])
def test_alternative_answer_passes_its_grade_cells(answer, index, capsys):
    """Fast direct check; tests/test_alternatives.py grades them through the real grader."""
    torch.set_num_threads(1)
    ns = reference_namespace()
    exec(compile(ALTERNATIVES.ALTERNATIVES[answer][index], f"<{answer} alternative {index}>", "exec"), ns)
    for grade_id in ANSWER_GRADE_CELLS[answer]:
        run_grade_cell(grade_id, ns)


@pytest.mark.parametrize("answer,source,grade_id,phrase", ALTERNATIVES.WRONG,
                         ids=[f"{w[0]}-{w[2]}" for w in ALTERNATIVES.WRONG])
def test_wrong_answer_fails_with_a_message_naming_the_mistake(answer, source, grade_id, phrase):
    torch.set_num_threads(1)
    ns = reference_namespace()
    exec(compile(source, f"<wrong {answer}>", "exec"), ns)
    with pytest.raises(AssertionError) as info:
        run_grade_cell(grade_id, ns)
    assert phrase in str(info.value), str(info.value)
