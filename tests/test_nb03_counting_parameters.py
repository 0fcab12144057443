"""Notebook 03 (counting parameters): the reference code against PyTorch's own modules, and the
grade cells against plausible wrong answers, cell by cell (a mistake costs the cells of its rule
and no other). Fast and pure pytest (no nbgrader): modules are built on the meta device."""
import random

import nbformat
import pytest
import torch
import torch.nn as nn

from grader import paths, solution_code

NAME = "03_counting_parameters"
HIDDEN = "### BEGIN HIDDEN TESTS"
SHAPE_CELLS = ("test_rnn_parameter_shapes", "test_rnn_parameter_shapes_stacks",
               "test_rnn_parameter_shapes_proj", "test_rnn_parameter_shapes_errors")
ALL_CELLS = SHAPE_CELLS + ("test_count_parameters", "test_textbook_gap")


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
    for args, kw, total in [((100, 100), {}, 80_800), ((100, 100, 2), {"bidirectional": True}, 403_200),
                            ((10, 20, 2), {"bidirectional": True}, 15_040)]:
        want = sum(p.numel() for p in nn.LSTM(*args, device="meta", **kw).parameters())
        assert want == total
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
        for p in (2, -1):
            with pytest.raises(ValueError):
                module(mode, 4, 8, proj_size=p)
            with pytest.raises(ValueError):
                ref["rnn_parameter_shapes"](mode, 4, 8, proj_size=p)
    for p in (8, 9, -1):
        with pytest.raises(ValueError):
            module("LSTM", 4, 8, proj_size=p)
        with pytest.raises(ValueError):
            ref["rnn_parameter_shapes"]("LSTM", 4, 8, proj_size=p)
    with pytest.raises(ValueError):
        ref["rnn_parameter_shapes"]("lstm2", 4, 8)


# ---------------------------------------------------------------- grade cells vs wrong answers

def notebook():
    return nbformat.read(paths.solution_path(NAME), as_version=4)


def grade_cells():
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in notebook().cells
            if c.metadata.get("nbgrader", {}).get("grade")}


def helpers_source():
    [cell] = [c for c in notebook().cells if "test-helpers" in c.metadata.get("tags", [])]
    return cell.source


def namespace(**overrides):
    """Reference definitions, the test-helpers cell, then some names replaced."""
    ns = solution_code.load(NAME)
    exec(compile(helpers_source(), "<test helpers>", "exec"), ns)
    ns.update(overrides)
    return ns


def run_grade_cell(grade_id, visible_only=False, **overrides):
    """Run one grade cell with the reference namespace, some names replaced. Returns None if it
    passes, else the exception (nbgrader scores any exception 0)."""
    source = grade_cells()[grade_id]
    if visible_only:
        source = source.split(HIDDEN)[0]
    try:
        exec(compile(source, grade_id, "exec"), namespace(**overrides))
    except Exception as e:
        return e
    return None


def test_grade_cells_are_the_expected_ones():
    nb = notebook()
    graded = [c.metadata["nbgrader"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert tuple(m["grade_id"] for m in graded) == ALL_CELLS
    assert sum(m["points"] for m in graded) == 6


def test_grade_cells_pass_on_the_reference(capsys):
    for gid in ALL_CELLS:
        assert run_grade_cell(gid) is None, gid
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("(visible tests)") == len(ALL_CELLS)


def _wrong_shapes(variant):
    ref = solution_code.load(NAME)["rnn_parameter_shapes"]

    def shapes(mode, input_size, hidden_size, num_layers=1, bias=True, bidirectional=False, proj_size=0):
        if variant == "no_proj_check" and proj_size and mode != "LSTM":
            return ref("LSTM", input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
        if variant == "no_size_check" and (proj_size < 0 or proj_size >= hidden_size) and mode == "LSTM":
            return ref(mode, input_size, hidden_size, num_layers, bias, bidirectional, 0)
        if variant == "unknown_mode_is_lstm" and mode not in ("RNN", "GRU", "LSTM"):
            mode = "LSTM"
        if variant == "unknown_mode_type_error" and mode not in ("RNN", "GRU", "LSTM"):
            raise TypeError(mode)
        out = ref(mode, input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
        if variant == "layer1_reads_H":
            width = proj_size or hidden_size
            out = {n: ((s[0], width) if n.startswith("weight_ih") and "_l0" not in n else s)
                   for n, s in out.items()}
        elif variant == "hr_first":
            out = dict(sorted(out.items(), key=lambda kv: (kv[0].split("_l")[1], not kv[0].startswith("weight_hr"))))
        elif variant == "hh_ignores_proj":
            out = {n: ((s[0], hidden_size) if n.startswith("weight_hh") else s) for n, s in out.items()}
        elif variant == "hr_transposed":
            out = {n: (s[::-1] if n.startswith("weight_hr") else s) for n, s in out.items()}
        elif variant == "sorted":
            out = dict(sorted(out.items()))
        elif variant == "reverse_first":
            out = dict(sorted(out.items(), key=lambda kv: (kv[0].split("_l")[1].split("_")[0],
                                                             not kv[0].endswith("_reverse"))))
        elif variant == "bias_always":
            if not bias:
                out = ref(mode, input_size, hidden_size, num_layers, True, bidirectional, proj_size)
        elif variant == "lists":
            out = {n: list(s) for n, s in out.items()}
        elif variant == "builds_module":
            m = getattr(nn, mode)(input_size, hidden_size, num_layers=num_layers, bias=bias,
                                  bidirectional=bidirectional, device="meta",
                                  **({"proj_size": proj_size} if proj_size else {}))
            out = {n: tuple(p.shape) for n, p in m.named_parameters()}
        return out
    return shapes


# variant: (cells that must fail, a phrase of the message of the first failing cell)
SHAPE_MUTANTS = {
    "bias_always": (("test_rnn_parameter_shapes",), "are not parameters of"),
    "lists": (("test_rnn_parameter_shapes", "test_rnn_parameter_shapes_stacks", "test_rnn_parameter_shapes_proj"),
              "should be a tuple"),
    "sorted": (("test_rnn_parameter_shapes", "test_rnn_parameter_shapes_stacks", "test_rnn_parameter_shapes_proj"),
               "named_parameters() goes layer by layer"),
    "builds_module": (("test_rnn_parameter_shapes", "test_rnn_parameter_shapes_stacks", "test_rnn_parameter_shapes_proj"),
                      "must be pure arithmetic"),
    "layer1_reads_H": (("test_rnn_parameter_shapes_stacks", "test_rnn_parameter_shapes_proj"), "layer k > 0 reads"),
    "reverse_first": (("test_rnn_parameter_shapes_stacks", "test_rnn_parameter_shapes_proj"), "forward before _reverse"),
    "hr_first": (("test_rnn_parameter_shapes_proj",), "named_parameters() goes layer by layer"),
    "hh_ignores_proj": (("test_rnn_parameter_shapes_proj",), "recurrent input is the projected h"),
    "hr_transposed": (("test_rnn_parameter_shapes_proj",), "[proj_size, H]"),
    "no_proj_check": (("test_rnn_parameter_shapes_errors",), "only LSTM has projections"),
    "no_size_check": (("test_rnn_parameter_shapes_errors",), "smaller than hidden_size"),
    "unknown_mode_is_lstm": (("test_rnn_parameter_shapes_errors",), "should raise ValueError or KeyError"),
    "unknown_mode_type_error": (("test_rnn_parameter_shapes_errors",), "raised TypeError"),
}


@pytest.mark.parametrize("variant", sorted(SHAPE_MUTANTS))
def test_shapes_grade_cells_reject_only_their_rule(variant):
    failing, words = SHAPE_MUTANTS[variant]
    wrong = _wrong_shapes(variant)
    for gid in SHAPE_CELLS:
        err = run_grade_cell(gid, rnn_parameter_shapes=wrong)
        if gid in failing:
            assert isinstance(err, AssertionError), (gid, err)
            if gid == failing[0]:
                assert words in str(err), (gid, str(err))
            # visible coverage: the visible tests alone already catch it
            assert run_grade_cell(gid, visible_only=True, rnn_parameter_shapes=wrong) is not None, gid
        else:
            assert err is None, (gid, err)


def test_key_error_for_an_unknown_mode_is_allowed():
    ref = solution_code.load(NAME)["rnn_parameter_shapes"]

    def dict_dispatch(mode, *args, **kwargs):
        {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
        return ref(mode, *args, **kwargs)
    assert run_grade_cell("test_rnn_parameter_shapes_errors", rnn_parameter_shapes=dict_dispatch) is None


def test_count_grade_cell_rejects_textbook_float_and_modules():
    def textbook(mode, m, h, num_layers=1, bias=True, bidirectional=False, proj_size=0):
        g = {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
        return g * (m * h + h * h + h)
    err = run_grade_cell("test_count_parameters", count_parameters=textbook)
    assert "nn.LSTM(100, 100) has 80,800 parameters, you counted 80,400" in str(err), err

    ref = solution_code.load(NAME)["count_parameters"]

    def as_float(*a, **k):
        return float(ref(*a, **k))
    assert "return a Python int, not float" in str(run_grade_cell("test_count_parameters", count_parameters=as_float))

    def built(mode, i, h, **kw):
        kw = {k: v for k, v in kw.items() if k != "proj_size" or v}
        return sum(p.numel() for p in getattr(nn, mode)(i, h, device="meta", **kw).parameters())
    assert "must be pure arithmetic" in str(run_grade_cell("test_count_parameters", count_parameters=built))

    def numel_of_tensors(*a, **k):
        return int(sum(torch.zeros(s).numel() for s in solution_code.load(NAME)["rnn_parameter_shapes"](*a, **k).values()))
    assert "must be pure arithmetic" in str(run_grade_cell("test_count_parameters", count_parameters=numel_of_tensors))


def test_gap_grade_cell_rejects_per_layer_only_and_no_directions():
    def one_layer(mode, h, num_layers=1, bidirectional=False):
        return {"RNN": 1, "GRU": 3, "LSTM": 4}[mode] * h
    assert "should be" in str(run_grade_cell("test_textbook_gap", textbook_gap=one_layer))
    assert run_grade_cell("test_textbook_gap", visible_only=True, textbook_gap=one_layer) is not None

    def no_directions(mode, h, num_layers=1, bidirectional=False):
        return {"RNN": 1, "GRU": 3, "LSTM": 4}[mode] * h * num_layers
    assert run_grade_cell("test_textbook_gap", textbook_gap=no_directions) is not None
    assert run_grade_cell("test_textbook_gap", visible_only=True, textbook_gap=no_directions) is not None

    def both_biases(mode, h, num_layers=1, bidirectional=False):
        return 2 * {"RNN": 1, "GRU": 3, "LSTM": 4}[mode] * h * num_layers * (2 if bidirectional else 1)
    assert run_grade_cell("test_textbook_gap", visible_only=True, textbook_gap=both_biases) is not None


def test_untouched_stubs_fail_every_grade_cell():
    def stub(*args, **kwargs):
        raise NotImplementedError()
    for gid in ALL_CELLS:
        err = run_grade_cell(gid, rnn_parameter_shapes=stub, count_parameters=stub, textbook_gap=stub)
        assert isinstance(err, NotImplementedError), (gid, err)


def test_student_copy_stubs_every_exercise():
    nb = nbformat.read(paths.student_path(NAME), as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for fn in ("rnn_parameter_shapes", "count_parameters", "textbook_gap"):
        assert f"def {fn}(" in text
    assert text.count("raise NotImplementedError()") == 3
