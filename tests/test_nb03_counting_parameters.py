"""Notebook 02: the reference code against PyTorch's own modules, and the grade cells against
plausible wrong answers. Fast and pure pytest (no nbgrader): modules are built on the meta device."""
import random

import nbformat
import pytest
import torch.nn as nn

from grader import paths, solution_code

NAME = "03_counting_parameters"


@pytest.fixture(scope="module")
def ref():
    return solution_code.load(NAME)


def configs(seed, n):
    rng = random.Random(seed)
    for _ in range(n):
        mode = rng.choice(["RNN", "GRU", "LSTM"])
        hidden = rng.randint(1, 64)
        kw = {"num_layers": rng.randint(1, 4), "bias": rng.random() < 0.5,
              "bidirectional": rng.random() < 0.5}
        if mode == "LSTM" and hidden > 1 and rng.random() < 0.5:
            kw["proj_size"] = rng.randint(1, hidden - 1)
        yield mode, rng.randint(1, 64), hidden, kw


def module(mode, input_size, hidden, **kw):
    return getattr(nn, mode)(input_size, hidden, device="meta", **kw)


def test_shapes_names_and_order_match_named_parameters(ref):
    for mode, m, h, kw in configs(0, 300):
        want = [(n, tuple(p.shape)) for n, p in module(mode, m, h, **kw).named_parameters()]
        got = list(ref["rnn_parameter_shapes"](mode, m, h, **kw).items())
        assert got == want, (mode, m, h, kw)


def test_count_matches_torch(ref):
    for mode, m, h, kw in configs(1, 300):
        want = sum(p.numel() for p in module(mode, m, h, **kw).parameters())
        assert ref["count_parameters"](mode, m, h, **kw) == want, (mode, m, h, kw)


def test_spec_examples_from_torch(ref):
    for args, kw in [((100, 100), {}), ((100, 100, 2), {"bidirectional": True}),
                     ((10, 20, 2), {"bidirectional": True})]:
        want = sum(p.numel() for p in nn.LSTM(*args, device="meta", **kw).parameters())
        assert ref["count_parameters"]("LSTM", *args, **kw) == want


def test_textbook_gap_is_the_second_bias(ref):
    rng = random.Random(2)
    for _ in range(200):
        mode, h = rng.choice(["RNN", "GRU", "LSTM"]), rng.randint(1, 200)
        layers, bi = rng.randint(1, 4), rng.random() < 0.5
        mod = module(mode, rng.randint(1, 50), h, num_layers=layers, bidirectional=bi)
        with_bias = sum(p.numel() for p in mod.parameters())
        # the textbook: every weight, plus one bias per block (bias_ih), no bias_hh
        textbook = sum(p.numel() for n, p in mod.named_parameters() if not n.startswith("bias_hh"))
        assert ref["textbook_gap"](mode, h, layers, bi) == with_bias - textbook


def test_proj_size_errors_like_torch(ref):
    for mode in ("RNN", "GRU"):
        with pytest.raises(ValueError):
            module(mode, 4, 8, proj_size=2)
        with pytest.raises(ValueError):
            ref["rnn_parameter_shapes"](mode, 4, 8, proj_size=2)
    for p in (8, 9):
        with pytest.raises(ValueError):
            module("LSTM", 4, 8, proj_size=p)
        with pytest.raises(ValueError):
            ref["rnn_parameter_shapes"]("LSTM", 4, 8, proj_size=p)
    with pytest.raises(ValueError):
        ref["rnn_parameter_shapes"]("lstm2", 4, 8)


# ---------------------------------------------------------------- grade cells vs wrong answers

def grade_cells():
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    setup = next(c.source for c in nb.cells if solution_code.is_setup_cell(c))
    cells = {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
             if c.metadata.get("nbgrader", {}).get("grade")}
    return setup, cells


def run_grade_cell(grade_id, **overrides):
    """Run one grade cell (visible + hidden tests) with the reference namespace, some names
    replaced; True if it passes."""
    ns = solution_code.load(NAME)
    ns.update(overrides)
    _, cells = grade_cells()
    try:
        exec(compile(cells[grade_id], grade_id, "exec"), ns)
    except Exception:        # nbgrader scores any exception 0
        return False
    return True


def test_grade_cells_pass_on_the_reference():
    _, cells = grade_cells()
    assert set(cells) == {"test_rnn_parameter_shapes", "test_count_parameters", "test_textbook_gap"}
    for gid in cells:
        assert run_grade_cell(gid), gid


def _wrong_shapes(variant):
    ref = solution_code.load(NAME)["rnn_parameter_shapes"]

    def shapes(mode, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False, proj_size=0):
        if variant == "no_proj_check" and proj_size and mode != "LSTM":
            return ref("LSTM", input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
        out = ref(mode, input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
        if variant == "layer1_reads_H":
            width = proj_size or hidden_size
            out = {n: ((s[0], width) if n.startswith("weight_ih") and "_l0" not in n else s)
                   for n, s in out.items()}
        elif variant == "hr_first":
            out = dict(sorted(out.items(), key=lambda kv: (kv[0].split("_l")[1], not kv[0].startswith("weight_hr"))))
        elif variant == "hh_ignores_proj":
            out = {n: ((s[0], hidden_size) if n.startswith("weight_hh") else s) for n, s in out.items()}
        elif variant == "sorted":
            out = dict(sorted(out.items()))
        elif variant == "builds_module":
            m = getattr(nn, mode)(input_size, hidden_size, num_layers=num_layers, bias=bias,
                                  bidirectional=bidirectional, device="meta",
                                  **({"proj_size": proj_size} if proj_size else {}))
            out = {n: tuple(p.shape) for n, p in m.named_parameters()}
        return out
    return shapes


@pytest.mark.parametrize("variant", ["layer1_reads_H", "hr_first", "hh_ignores_proj", "sorted",
                                     "no_proj_check", "builds_module"])
def test_shapes_grade_cell_rejects(variant):
    assert not run_grade_cell("test_rnn_parameter_shapes", rnn_parameter_shapes=_wrong_shapes(variant))


def test_count_grade_cell_rejects_textbook_and_float():
    def textbook(mode, m, h, num_layers=1, bias=True, bidirectional=False, proj_size=0):
        g = {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
        return g * (m * h + h * h + h)
    assert not run_grade_cell("test_count_parameters", count_parameters=textbook)
    ref = solution_code.load(NAME)["count_parameters"]
    assert not run_grade_cell("test_count_parameters", count_parameters=lambda *a, **k: float(ref(*a, **k)))


def test_gap_grade_cell_rejects_per_layer_only():
    def one_layer(mode, h, num_layers=1, bidirectional=False):
        return {"RNN": 1, "GRU": 3, "LSTM": 4}[mode] * h
    assert not run_grade_cell("test_textbook_gap", textbook_gap=one_layer)

    def no_directions(mode, h, num_layers=1, bidirectional=False):
        return {"RNN": 1, "GRU": 3, "LSTM": 4}[mode] * h * num_layers
    assert not run_grade_cell("test_textbook_gap", textbook_gap=no_directions)


def test_student_copy_stubs_every_exercise():
    nb = nbformat.read(paths.student_path(NAME), as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for fn in ("rnn_parameter_shapes", "count_parameters", "textbook_gap"):
        assert f"def {fn}(" in text
    assert text.count("raise NotImplementedError()") == 3
