"""Notebook 03 (bidirectional output layout, packed sequences): the reference code against PyTorch.

Ground truth is never read off the layout being tested: every (layer, direction) of a module is
re-run as its own one-layer, one-direction copy with the weights copied in, one sequence at a
time (so padding cannot leak in). On top of that, the notebook's grade cells are executed
directly (no nbgrader): they pass on the reference, and known wrong answers fail them with the
message that names the mistake.
"""
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


# ---------------------------------------------------------------- the grade cells themselves

def grade_cells():
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")}


def run_grade_cell(grade_id, **overrides):
    ns = solution_code.load("04_bidirectional_layout")
    ns.update(overrides)
    exec(compile(grade_cells()[grade_id], f"<{grade_id}>", "exec"), ns)


@pytest.mark.parametrize("grade_id", ["test_split_directions", "test_h_n_by_layer",
                                      "test_top_layer_final", "test_make_packed_batch",
                                      "test_final_from_output"])
def test_grade_cell_passes_on_the_reference(grade_id, capsys):
    torch.set_num_threads(1)
    run_grade_cell(grade_id)
    assert "visible tests passed" in capsys.readouterr().out


def test_untouched_student_copy_fails_every_grade_cell():
    nb = nbformat.read(paths.student_path(NAME), as_version=4)
    ns = {}
    failed = []
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        is_setup = "setup" in cell.metadata.get("tags", [])
        if cell.cell_type != "code" or not (is_setup or meta.get("solution") or meta.get("grade")):
            continue
        try:
            exec(compile(cell.source, "<student>", "exec"), ns)
        except (NotImplementedError, AssertionError):
            failed.append(meta.get("grade_id"))
    assert sorted(g for g in failed) == sorted(grade_cells()), failed


def _swap(output, hidden_size):
    return output[..., hidden_size:], output[..., :hidden_size]


def _split_time(output, hidden_size):
    return output[:, :hidden_size], output[:, hidden_size:]


def _chunk(output, hidden_size):
    return tuple(output.chunk(2, dim=-1))


def _split_3d_only(output, hidden_size):
    if output.shape[-1] != 2 * hidden_size:
        raise ValueError
    return output[:, :, :hidden_size], output[:, :, hidden_size:]


def _direction_major(h_n, num_layers, bidirectional):
    D = 2 if bidirectional else 1
    if h_n.shape[0] != num_layers * D:
        raise ValueError
    return h_n.reshape(D, num_layers, *h_n.shape[1:]).transpose(0, 1)


def _always_two(h_n, num_layers, bidirectional):
    if h_n.shape[0] != num_layers * 2:
        raise ValueError
    return h_n.reshape(num_layers, 2, *h_n.shape[1:])


def _plain_view(h_n, num_layers, bidirectional):
    return h_n.view(num_layers, 2 if bidirectional else 1, *h_n.shape[1:])


def _top_last_row(h_n, num_layers, bidirectional):
    return h_n[-1]


def _top_swapped(h_n, num_layers, bidirectional):
    return torch.cat([h_n[-1], h_n[-2]], -1) if bidirectional else h_n[-1]


def _top_layer0(h_n, num_layers, bidirectional):
    return torch.cat([h_n[0], h_n[1]], -1) if bidirectional else h_n[0]


def _top_direction_major(h_n, num_layers, bidirectional):
    D = 2 if bidirectional else 1
    return torch.cat(list(h_n.reshape(D, num_layers, *h_n.shape[1:])[:, -1]), -1)


def _pack_sorted(seqs):
    return pack_sequence(seqs)


def _pack_device_lengths(seqs):
    lengths = torch.tensor([len(s) for s in seqs], device=seqs[0].device)
    return pack_padded_sequence(pad_sequence(seqs), lengths, enforce_sorted=False)


def _pack_presorted(seqs):
    return pack_sequence(sorted(seqs, key=len, reverse=True))


def _pack_wrong_layout(seqs):
    lengths = torch.tensor([len(s) for s in seqs])
    return pack_padded_sequence(pad_sequence(seqs, batch_first=True), lengths, enforce_sorted=False)


def _ffo(read_fwd, read_bwd):
    """final_from_output built from two index rules over a time-major output."""
    def f(output, lengths=None, batch_first=False, bidirectional=True):
        out = output.transpose(0, 1) if batch_first else output
        T, B, DH = out.shape
        last = [T] * B if lengths is None else [int(n) for n in lengths]
        rows = []
        for b in range(B):
            fwd = out[read_fwd(last[b], T), b]
            if not bidirectional:
                rows.append(fwd)
                continue
            H = DH // 2
            rows.append(torch.cat([fwd[:H], out[read_bwd(last[b], T), b, H:]]))
        return torch.stack(rows)
    return f


def _ffo_ignores_batch_first(output, lengths=None, batch_first=False, bidirectional=True):
    return _ffo(lambda n, T: n - 1, lambda n, T: 0)(output, lengths, False, bidirectional)


def _ffo_always_bidirectional(output, lengths=None, batch_first=False, bidirectional=True):
    return _ffo(lambda n, T: n - 1, lambda n, T: 0)(output, lengths, batch_first, True)


MUTANTS = [
    ("test_split_directions", "split_directions", _swap, "that is the backward half"),
    ("test_split_directions", "split_directions", _split_time, "split the LAST dimension"),
    ("test_split_directions", "split_directions", _chunk, "must raise ValueError"),
    ("test_split_directions", "split_directions", _split_3d_only, None),
    ("test_h_n_by_layer", "h_n_by_layer", _direction_major, "direction-major"),
    ("test_h_n_by_layer", "h_n_by_layer", _plain_view, "raise ValueError"),
    ("test_h_n_by_layer", "h_n_by_layer", _always_two, None),
    ("test_top_layer_final", "top_layer_final", _top_last_row, "only the backward half"),
    ("test_top_layer_final", "top_layer_final", _top_swapped, "swapped"),
    ("test_top_layer_final", "top_layer_final", _top_layer0, "you read layer 0"),
    ("test_top_layer_final", "top_layer_final", _top_direction_major, "direction-major"),
    ("test_make_packed_batch", "make_packed_batch", _pack_sorted, "enforce_sorted"),
    ("test_make_packed_batch", "make_packed_batch", _pack_device_lengths, "meta device"),
    ("test_make_packed_batch", "make_packed_batch", _pack_presorted, "sorted_indices"),
    ("test_make_packed_batch", "make_packed_batch", _pack_wrong_layout, "agree on batch_first"),
    ("test_final_from_output", "final_from_output",
     _ffo(lambda n, T: n - 1, lambda n, T: n - 1), "backward half was read at t=length-1"),
    ("test_final_from_output", "final_from_output",
     _ffo(lambda n, T: n - 1, lambda n, T: T - 1), "backward half was read at t=S-1"),
    ("test_final_from_output", "final_from_output",
     _ffo(lambda n, T: T - 1, lambda n, T: 0), "forward half was read at t=S-1"),
    ("test_final_from_output", "final_from_output",
     _ffo(lambda n, T: n, lambda n, T: 0), "IndexError"),
    ("test_final_from_output", "final_from_output", _ffo_ignores_batch_first, "batch_first"),
    ("test_final_from_output", "final_from_output", _ffo_always_bidirectional, "bidirectional=False"),
]


@pytest.mark.parametrize("grade_id,name,mutant,message", MUTANTS,
                         ids=[f"{m[1]}-{m[2].__name__ if m[2].__name__ != 'f' else i}"
                              for i, m in enumerate(MUTANTS)])
def test_wrong_answer_fails_with_a_message_naming_the_mistake(grade_id, name, mutant, message, capsys):
    torch.set_num_threads(1)
    with pytest.raises(Exception) as info:
        run_grade_cell(grade_id, **{name: mutant})
    if message is not None:
        assert isinstance(info.value, AssertionError), repr(info.value)
        assert message in str(info.value), str(info.value)
