"""Notebook 01 (LSTM and GRU gate equations): other correct answers, and wrong ones.

The format of ALTERNATIVES and WRONG: tests/alternatives/README.md.
"""

ALTERNATIVES = {
    "lstm_gate_chunks": [
        # Tensor.chunk along the first dimension
        '''def lstm_gate_chunks(t):
    """Split a stacked LSTM weight or bias into its gate blocks (i, f, g, o)."""
    return tuple(t.chunk(4, dim=0))
''',
        # narrow in a list comprehension, a list as the result
        '''def lstm_gate_chunks(t):
    H = t.size(0) // 4
    return [t.narrow(0, k * H, H) for k in range(4)]
''',
        # unflatten the first dimension into (4, H) and unbind the gate axis
        '''def lstm_gate_chunks(t):
    i, f, g, o = t.unflatten(0, (4, -1)).unbind(0)
    return i, f, g, o
''',
    ],
    "lstm_cell_step": [
        # einsum, biases in a loop, chunk along the columns
        '''def lstm_cell_step(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One LSTM time step, equal to nn.LSTMCell with the same weights."""
    gates = torch.einsum("bi,gi->bg", x, weight_ih) + torch.einsum("bh,gh->bg", h, weight_hh)
    for b in (bias_ih, bias_hh):
        if b is not None:
            gates = gates + b
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new
''',
        # one gate at a time with F.linear on row slices, gates kept in a dict
        '''import torch.nn.functional as F

def lstm_cell_step(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    H = h.size(1)
    act = {}
    for k, name in enumerate("ifgo"):
        rows = slice(k * H, (k + 1) * H)
        a = F.linear(x, weight_ih[rows], None if bias_ih is None else bias_ih[rows])
        a = a + F.linear(h, weight_hh[rows], None if bias_hh is None else bias_hh[rows])
        act[name] = torch.tanh(a) if name == "g" else torch.sigmoid(a)
    c_next = act["f"] * c + act["i"] * act["g"]
    h_next = act["o"] * torch.tanh(c_next)
    return (h_next, c_next)
''',
        # addmm with a summed bias (0 when both are None), split by sizes
        '''def lstm_cell_step(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    H = weight_hh.shape[1]
    bias = (0 if bias_ih is None else bias_ih) + (0 if bias_hh is None else bias_hh)
    pre = torch.addmm(h @ weight_hh.t(), x, weight_ih.t()) + bias
    a_i, a_f, a_g, a_o = torch.split(pre, [H, H, H, H], dim=1)
    new_c = a_f.sigmoid() * c + a_i.sigmoid() * a_g.tanh()
    new_h = a_o.sigmoid() * new_c.tanh()
    return new_h, new_c
''',
    ],
    "gru_cell_step": [
        # F.linear takes bias=None, chunk(3), torch-free interpolation n + z * (h - n)
        '''import torch.nn.functional as F

def gru_cell_step(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One GRU time step, equal to nn.GRUCell with the same weights."""
    i_r, i_z, i_n = F.linear(x, weight_ih, bias_ih).chunk(3, 1)
    h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, 1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)
''',
        # per-gate matrices, einsum, zero biases in the inputs' dtype, torch.lerp
        '''def gru_cell_step(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    H = h.shape[1]
    W_ir, W_iz, W_in = weight_ih.split(H)
    W_hr, W_hz, W_hn = weight_hh.split(H)
    zeros = torch.zeros(3 * H, dtype=x.dtype, device=x.device)
    b_ir, b_iz, b_in = (zeros if bias_ih is None else bias_ih).split(H)
    b_hr, b_hz, b_hn = (zeros if bias_hh is None else bias_hh).split(H)
    r = torch.sigmoid(torch.einsum("bi,hi->bh", x, W_ir) + b_ir + torch.einsum("bj,hj->bh", h, W_hr) + b_hr)
    z = torch.sigmoid(torch.einsum("bi,hi->bh", x, W_iz) + b_iz + torch.einsum("bj,hj->bh", h, W_hz) + b_hz)
    n = torch.tanh(torch.einsum("bi,hi->bh", x, W_in) + b_in + r * (torch.einsum("bj,hj->bh", h, W_hn) + b_hn))
    return torch.lerp(n, h, z)
''',
    ],
    "latch_weights": [
        # filled in place, the biases in bias_hh, a larger scale, o left at 0.5
        '''def latch_weights():
    big = 12.0
    w_ih = torch.zeros(4, 2)
    w_ih[0, 1] = 2 * big       # i opens only on the flag
    w_ih[1, 1] = -2 * big      # f closes only on the flag
    w_ih[2, 0] = 1.0           # g = tanh(value)
    b_hh = torch.tensor([-big, big, 0.0, 0.0])
    return {"weight_ih_l0": w_ih, "weight_hh_l0": torch.zeros(4, 1),
            "bias_ih_l0": torch.zeros(4), "bias_hh_l0": b_hh}
''',
        # a table per gate, float64 tensors, the bias split over both vectors, dict(...)
        '''def latch_weights():
    s = 15.0
    rows = {"i": ([0.0, 2 * s], -s), "f": ([0.0, -2 * s], s), "g": ([1.0, 0.0], 0.0), "o": ([0.3, 0.0], 0.0)}
    W = torch.tensor([rows[k][0] for k in "ifgo"], dtype=torch.float64)
    b = torch.tensor([rows[k][1] for k in "ifgo"], dtype=torch.float64)
    return dict(weight_ih_l0=W, weight_hh_l0=torch.zeros(4, 1, dtype=torch.float64),
                bias_ih_l0=b / 2, bias_hh_l0=b / 2)
''',
    ],
}

_LSTM_REF = '''def lstm_cell_step(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    H = h.shape[-1]
    pre = x @ weight_ih.T + h @ weight_hh.T
    if bias_ih is not None:
        pre = pre + bias_ih
    if bias_hh is not None:
        pre = pre + bias_hh
    i = torch.sigmoid(pre[:, 0 * H:1 * H])
    f = torch.sigmoid(pre[:, 1 * H:2 * H])
    g = torch.tanh(pre[:, 2 * H:3 * H])
    o = torch.sigmoid(pre[:, 3 * H:4 * H])
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)
    return h_next, c_next
'''

_GRU_REF = '''def gru_cell_step(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    H = h.shape[-1]
    gi = x @ weight_ih.T
    gh = h @ weight_hh.T
    if bias_ih is not None:
        gi = gi + bias_ih
    if bias_hh is not None:
        gh = gh + bias_hh
    r = torch.sigmoid(gi[:, :H] + gh[:, :H])
    z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h
'''

_LATCH_REF = '''def latch_weights():
    s = 10.0
    weight_ih = torch.tensor([[0.0, 2 * s],
                              [0.0, -2 * s],
                              [1.0, 0.0],
                              [0.0, 0.0]])
    bias_ih = torch.tensor([-s, s, 0.0, s])
    return {"weight_ih_l0": weight_ih, "weight_hh_l0": torch.zeros(4, 1),
            "bias_ih_l0": bias_ih, "bias_hh_l0": torch.zeros(4)}
'''


def _edit(source, old, new):
    assert old in source, old
    return source.replace(old, new)


WRONG = [
    # the gates split along the last dimension
    ("lstm_gate_chunks", "def lstm_gate_chunks(t):\n    return t.chunk(4, dim=-1)\n",
     "test_lstm_gate_chunks", "four tensors"),
    # CS231n / fastbook order i, f, o, g
    ("lstm_cell_step", _edit(_edit(_LSTM_REF, "g = torch.tanh(pre[:, 2 * H:3 * H])", "g = torch.tanh(pre[:, 3 * H:4 * H])"),
                             "o = torch.sigmoid(pre[:, 3 * H:4 * H])", "o = torch.sigmoid(pre[:, 2 * H:3 * H])"),
     "test_lstm_cell_step", "check the order i, f, g, o"),
    # one bias only
    ("lstm_cell_step", _edit(_LSTM_REF, "        pre = pre + bias_hh\n", "        pass\n"),
     "test_lstm_cell_step", "bias_hh is missing"),
    # adds the biases without checking for None
    ("lstm_cell_step", _edit(_edit(_LSTM_REF, "if bias_ih is not None:", "if True:"), "if bias_hh is not None:", "if True:"),
     "test_lstm_cell_step_biases", "NoneType"),
    # updates c in place
    ("lstm_cell_step", _edit(_LSTM_REF, "c_next = f * c + i * g", "c_next = c.mul_(f).add_(i * g)"),
     "test_lstm_cell_step_dtype", "in place"),
    # a float32 accumulator
    ("lstm_cell_step", _edit(_LSTM_REF, "pre = x @ weight_ih.T + h @ weight_hh.T",
                             "pre = torch.zeros(x.shape[0], 4 * H)\n    pre += x @ weight_ih.T + h @ weight_hh.T"),
     "test_lstm_cell_step_dtype", "float32 rounding"),
    # the built-in kernel through torch.ops.aten (issue 13)
    ("lstm_cell_step", '''def lstm_cell_step(x, h, c, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    h_next, c_next = torch.ops.aten.lstm_cell.default(x, [h, c], weight_ih, weight_hh, bias_ih, bias_hh)
    return h_next, c_next
''', "test_lstm_cell_step", "calls the built-in lstm_cell"),
    # b_hn outside the reset product
    ("gru_cell_step", _edit(_GRU_REF, "n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])",
                            "b_hn = 0 if bias_hh is None else bias_hh[2 * H:]\n"
                            "    n = torch.tanh(gi[:, 2 * H:] + b_hn + r * (gh[:, 2 * H:] - b_hn))"),
     "test_gru_cell_step", "b_hn sits inside r * (W_hn h + b_hn)"),
    # the published paper's form W_hn (r * h)
    ("gru_cell_step", _edit(_GRU_REF, "n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])",
                            "n = torch.tanh(gi[:, 2 * H:] + (r * h) @ weight_hh[2 * H:].T"
                            " + (0 if bias_hh is None else bias_hh[2 * H:]))"),
     "test_gru_cell_step", "differs from nn.GRUCell"),
    # z and 1 - z swapped
    ("gru_cell_step", _edit(_GRU_REF, "return (1 - z) * n + z * h", "return z * n + (1 - z) * h"),
     "test_gru_cell_step", "z and 1 - z are swapped"),
    # the built-in kernel through a reference captured at import
    ("gru_cell_step", '''_gru = torch._VF.gru_cell

def gru_cell_step(x, h, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    return _gru(x, h, weight_ih, weight_hh, bias_ih, bias_hh)
''', "test_gru_cell_step_biases", "calls the built-in gru_cell"),
    # gates not saturated enough: the memory leaks
    ("latch_weights", _edit(_LATCH_REF, "s = 10.0", "s = 2.5"), "test_latch_weights_hold", "c_n misses tanh"),
    # the input gate always open
    ("latch_weights", _edit(_edit(_LATCH_REF, "[[0.0, 2 * s],", "[[0.0, 0.0],"), "[-s, s, 0.0, s]", "[s, -s, 0.0, s]"),
     "test_latch_weights_hold", "c_n follows the LAST value"),
    # module-style names without the layer suffix
    ("latch_weights", _LATCH_REF.replace("_l0", ""), "test_latch_weights", "the keys should be"),
]
