"""Notebook 05 (the GRU): other correct answers, and wrong ones.

The format of ALTERNATIVES and WRONG: tests/alternatives/README.md.
"""

_CLAIM_NAMES = '''[
        "one_step_output_is_top_state", "one_step_output_is_bottom_state", "one_step_shapes_match",
        "batch_first_step_is_transposed", "carry_gives_whole_output", "carry_gives_whole_h_n",
        "fresh_start_gives_same_output", "bidirectional_carry_gives_whole", "z_one_keeps_the_state",
        "z_zero_forgets_the_state", "z_and_r_zero_forget_the_state", "state_stays_within_one"]'''

ALTERNATIVES = {
    "gru_latch_weights": [
        # fill a real nn.GRU(2, 1) in place and hand back its state_dict
        '''def gru_latch_weights():
    gru = nn.GRU(2, 1)
    with torch.no_grad():
        for p in gru.parameters():
            p.zero_()
        gru.weight_ih_l0[1, 1] = -30.0     # z: flag up -> -15, so take the candidate
        gru.bias_ih_l0[1] = 15.0           # z: flag down -> +15, keep
        gru.weight_ih_l0[2, 0] = 1.0       # n = tanh(value)
    return {name: p.detach().clone() for name, p in gru.state_dict().items()}
''',
        # z's bias in bias_hh; a closed reset gate so a non-zero W_hn does no harm
        '''def gru_latch_weights():
    big = 12.0
    w_ih, w_hh = torch.zeros(3, 2), torch.zeros(3, 1)
    b_ih, b_hh = torch.zeros(3), torch.zeros(3)
    w_ih[1] = torch.tensor([0.0, -2 * big])
    b_hh[1] = big
    w_ih[2, 0] = 1.0
    b_ih[0] = -big            # r = sigmoid(-12): the candidate ignores h
    w_hh[2, 0] = 0.7
    return dict(weight_ih_l0=w_ih, weight_hh_l0=w_hh, bias_ih_l0=b_ih, bias_hh_l0=b_hh)
''',
        # float64 literals, the z pre-activation written as s * (1 - 2 * flag)
        '''def gru_latch_weights():
    s = 11.0
    kwargs = dict(dtype=torch.float64)
    return {
        "weight_ih_l0": torch.tensor([[0, 0], [0, -2 * s], [1, 0]], **kwargs),
        "weight_hh_l0": torch.zeros(3, 1, **kwargs),
        "bias_ih_l0": torch.tensor([0, s, 0], **kwargs),
        "bias_hh_l0": torch.zeros(3, **kwargs),
    }
''',
    ],
    "update_gate": [
        # a loop over time with einsum, carrying the previous state by hand
        '''def update_gate(gru, x, h0=None):
    T, B, _ = x.shape
    H = gru.hidden_size
    out, _ = gru(x, h0)
    h = torch.zeros(B, H, dtype=x.dtype) if h0 is None else h0[0]
    W_iz, W_hz = gru.weight_ih_l0[H:2 * H], gru.weight_hh_l0[H:2 * H]
    b = gru.bias_ih_l0[H:2 * H] + gru.bias_hh_l0[H:2 * H] if gru.bias else 0.0
    zs = []
    for t in range(T):
        zs.append(torch.sigmoid(torch.einsum("bi,hi->bh", x[t], W_iz) + torch.einsum("bj,hj->bh", h, W_hz) + b))
        h = out[t]
    return torch.stack(zs)
''',
        # chunk(3) and F.linear, biases passed as None when the module has none
        '''import torch.nn.functional as F


def update_gate(gru, x, h0=None):
    output, _ = gru(x, h0)
    if h0 is None:
        h0 = torch.zeros_like(output[:1])
    prev = torch.cat((h0, output[:-1]), dim=0)
    _, w_iz, _ = gru.weight_ih_l0.chunk(3, 0)
    _, w_hz, _ = gru.weight_hh_l0.chunk(3, 0)
    b_iz = gru.bias_ih_l0.chunk(3)[1] if gru.bias else None
    b_hz = gru.bias_hh_l0.chunk(3)[1] if gru.bias else None
    return torch.sigmoid(F.linear(x, w_iz, b_iz) + F.linear(prev, w_hz, b_hz))
''',
        # named_parameters dict, getattr for the biases, matmul on a flattened batch
        '''def update_gate(gru, x, h0=None):
    params = dict(gru.named_parameters())
    H = gru.hidden_size
    T, B, I = x.shape
    states, _ = gru(x, h0)
    first = h0 if h0 is not None else x.new_zeros((1, B, H))
    before = torch.cat([first, states[: T - 1]])
    pre = (x.reshape(T * B, I) @ params["weight_ih_l0"][H:2 * H].t()
           + before.reshape(T * B, H) @ params["weight_hh_l0"][H:2 * H].t())
    for name in ("bias_ih_l0", "bias_hh_l0"):
        if name in params:
            pre = pre + params[name][H:2 * H]
    return torch.sigmoid(pre).reshape(T, B, H)
''',
    ],
    "generate": [
        # a while loop, the prediction from hidden[-1], torch.cat of one-step slices
        '''def generate(gru, readout, first_input, steps, hidden=None):
    if gru.bidirectional:
        raise ValueError("cannot decode with a bidirectional GRU")
    axis = 1 if gru.batch_first else 0
    preds, x, t = [], first_input, 0
    while t < steps:
        step = x[:, None] if gru.batch_first else x[None]
        _, hidden = gru(step, hidden)
        x = readout(hidden[-1])
        preds.append(x.unsqueeze(axis))
        t += 1
    return torch.cat(preds, dim=axis), hidden
''',
        # reshape to the one-step layout, out[-1] or out[:, -1], a preallocated result
        '''def generate(gru, readout, first_input, steps, hidden=None):
    if gru.bidirectional:
        raise ValueError("generate needs a one-direction GRU")
    B, I = first_input.shape
    ys = []
    inp = first_input
    for t in range(steps):
        if gru.batch_first:
            out, hidden = gru(inp.reshape(B, 1, I), hidden)
            top = out[:, -1]
        else:
            out, hidden = gru(inp.reshape(1, B, I), hidden)
            top = out[-1]
        inp = readout(top)
        ys.append(inp)
    ys = torch.stack(ys)                      # (steps, B, I)
    if gru.batch_first:
        ys = ys.permute(1, 0, 2)
    return ys, hidden
''',
        # always time-major internally: a batch_first module gets transposed steps
        '''def generate(gru, readout, first_input, steps, hidden=None):
    if gru.bidirectional:
        raise ValueError("a bidirectional GRU cannot generate step by step")
    outputs = []
    current = first_input.unsqueeze(0)        # (1, B, I)
    for _ in range(steps):
        feed = current.transpose(0, 1) if gru.batch_first else current
        out, hidden = gru(feed, hidden)
        if gru.batch_first:
            out = out.transpose(0, 1)
        current = readout(out)                # (1, B, I)
        outputs.append(current)
    ys = torch.cat(outputs, 0)
    return (ys.transpose(0, 1) if gru.batch_first else ys), hidden
''',
    ],
    "my_claims": [
        # the template filled in place, the two stub lines deleted
        '''def my_claims():
    """Your predictions: {claim name: True or False} for every claim of CLAIM_EXPR.
    Write them BEFORE you run the verification cell."""
    CLAIMS = {
        "one_step_output_is_top_state": True,
        "one_step_output_is_bottom_state": False,
        "one_step_shapes_match": False,
        "batch_first_step_is_transposed": True,
        "carry_gives_whole_output": True,
        "carry_gives_whole_h_n": True,
        "fresh_start_gives_same_output": False,
        "bidirectional_carry_gives_whole": False,
        "z_one_keeps_the_state": True,
        "z_zero_forgets_the_state": False,
        "z_and_r_zero_forget_the_state": True,
        "state_stays_within_one": True,
    }
    return CLAIMS
''',
        # the true claims as a set, everything else False
        '''def my_claims():
    holds = {"one_step_output_is_top_state", "batch_first_step_is_transposed",
             "carry_gives_whole_output", "carry_gives_whole_h_n", "z_one_keeps_the_state",
             "z_and_r_zero_forget_the_state", "state_stays_within_one"}
    names = ''' + _CLAIM_NAMES + '''
    return {name: name in holds for name in names}
''',
        # the template kept, the Nones replaced afterwards in a loop
        '''def my_claims():
    CLAIMS = {
        "one_step_output_is_top_state": None,
        "one_step_output_is_bottom_state": None,
        "one_step_shapes_match": None,
        "batch_first_step_is_transposed": None,
        "carry_gives_whole_output": None,
        "carry_gives_whole_h_n": None,
        "fresh_start_gives_same_output": None,
        "bidirectional_carry_gives_whole": None,
        "z_one_keeps_the_state": None,
        "z_zero_forgets_the_state": None,
        "z_and_r_zero_forget_the_state": None,
        "state_stays_within_one": None,
    }
    false_ones = ["one_step_output_is_bottom_state", "one_step_shapes_match",
                  "fresh_start_gives_same_output", "bidirectional_carry_gives_whole",
                  "z_zero_forgets_the_state"]
    for name in CLAIMS:
        CLAIMS[name] = name not in false_ones
    return CLAIMS
''',
    ],
}

_LATCH = '''def gru_latch_weights():
    s = {s}
    return {{"weight_ih_l0": torch.tensor([[0.0, 0.0], [0.0, {zw}], [{gain}, 0.0]]),
            "weight_hh_l0": torch.zeros(3, 1),
            "bias_ih_l0": torch.tensor([0.0, {zb}, 0.0]),
            "bias_hh_l0": torch.zeros(3)}}
'''

_UPDATE_GATE = '''def update_gate(gru, x, h0=None):
    H = gru.hidden_size
    output, _ = gru(x, h0)
    start = x.new_zeros(1, x.shape[1], H) if h0 is None else h0
    h_prev = {prev}
    rows = slice({lo}, {hi})
    a = x @ gru.weight_ih_l0[rows].T + h_prev @ gru.weight_hh_l0[rows].T
    if gru.bias:
        a = a + {biases}
    return torch.sigmoid(a)
'''

_GENERATE = '''def generate(gru, readout, first_input, steps, hidden=None):
    {check}
    axis = 1 if gru.batch_first else 0
    inp, ys = first_input, []
    for _ in range(steps):
        output, hidden = gru(inp.unsqueeze({step_axis}), {carry})
        y = readout({read})
        ys.append(y)
        inp = {feed}
    return torch.stack(ys, dim={stack_axis}), hidden
'''
_GEN_OK = dict(check='if gru.bidirectional:\n        raise ValueError("bidirectional")', step_axis="axis",
               carry="hidden", read="hidden[-1]", feed="y", stack_axis="axis")

_CLAIMS_ONE_WRONG = ALTERNATIVES["my_claims"][0].replace(
    '"z_zero_forgets_the_state": False', '"z_zero_forgets_the_state": True')
_CLAIMS_UNTOUCHED_BUT_RUNS = ALTERNATIVES["my_claims"][2].split("    false_ones")[0] + "    return CLAIMS\n"

WRONG = [
    # the update gate the wrong way round: it takes every value and keeps none
    ("gru_latch_weights", _LATCH.format(s=10.0, zw="2 * s", zb="-s", gain=1.0),
     "test_gru_latch_weights_holds", "h_n follows the LAST value"),
    # gates not saturated: sigmoid(5) leaks over 19 hold steps
    ("gru_latch_weights", _LATCH.format(s=5.0, zw="-2 * s", zb="s", gain=1.0),
     "test_gru_latch_weights_holds", "fades over the hold steps"),
    # the candidate stores tanh(2 v)
    ("gru_latch_weights", _LATCH.format(s=10.0, zw="-2 * s", zb="s", gain=2.0),
     "test_gru_latch_weights_holds", "the candidate n = tanh(value)"),
    # LSTM-sized rows (i, f, g, o) for a GRU
    ("gru_latch_weights", '''def gru_latch_weights():
    return {"weight_ih_l0": torch.zeros(4, 2), "weight_hh_l0": torch.zeros(4, 1),
            "bias_ih_l0": torch.zeros(4), "bias_hh_l0": torch.zeros(4)}
''', "test_gru_latch_weights_format", "should have shape (3, 2)"),
    # rows 0:H, the reset gate
    ("update_gate", _UPDATE_GATE.format(prev="torch.cat([start, output[:-1]])", lo="0", hi="H",
                                         biases="gru.bias_ih_l0[rows] + gru.bias_hh_l0[rows]"),
     "test_update_gate", "that is the reset gate r"),
    # the state after the step instead of before it
    ("update_gate", _UPDATE_GATE.format(prev="output", lo="H", hi="2 * H",
                                         biases="gru.bias_ih_l0[rows] + gru.bias_hh_l0[rows]"),
     "test_update_gate", "reads the state BEFORE step t"),
    # one bias only
    ("update_gate", _UPDATE_GATE.format(prev="torch.cat([start, output[:-1]])", lo="H", hi="2 * H",
                                         biases="gru.bias_ih_l0[rows]"),
     "test_update_gate", "you added only bias_ih"),
    # the prediction read from the bottom layer
    ("generate", _GENERATE.format(**{**_GEN_OK, "read": "hidden[0]"}),
     "test_generate", "reads the BOTTOM layer"),
    # hidden not carried: every step starts from zeros
    ("generate", _GENERATE.format(**{**_GEN_OK, "carry": "None"}),
     "test_generate", "starts from zeros at every step"),
    # the step fed as (B, I), without its time axis
    ("generate", _GENERATE.format(**{**_GEN_OK, "step_axis": "axis", "read": "output[0]"}).replace(
        "gru(inp.unsqueeze(axis), hidden)", "gru(inp, hidden)"),
     "test_generate", "one step is one call of gru on a (1, B, I) input"),
    # ys always time-major, even for a batch_first module
    ("generate", _GENERATE.format(**{**_GEN_OK, "stack_axis": "0"}),
     "test_generate_batch_first", "ys should be a tensor of shape (B, steps, I)"),
    # no check for a bidirectional module
    ("generate", _GENERATE.format(**{**_GEN_OK, "check": "pass"}),
     "test_generate_bidirectional", "should raise ValueError for a bidirectional GRU"),
    # one prediction wrong
    ("my_claims", _CLAIMS_ONE_WRONG, "test_my_claims", "'z_zero_forgets_the_state' (it is False)"),
    # the stub lines deleted, the Nones left
    ("my_claims", _CLAIMS_UNTOUCHED_BUT_RUNS, "test_my_claims", "make a prediction (True or False)"),
]
