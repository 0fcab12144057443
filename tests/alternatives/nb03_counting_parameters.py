"""Notebook 03 (counting parameters): other correct answers, and wrong ones.

The format of ALTERNATIVES and WRONG: tests/alternatives/README.md.
"""

ALTERNATIVES = {
    "rnn_parameter_shapes": [
        # if/elif for G, a list of (name, shape) pairs turned into a dict at the end
        '''def rnn_parameter_shapes(mode, input_size, hidden_size, num_layers=1, bias=True,
                         bidirectional=False, proj_size=0):
    """Names and shapes of the parameters of nn.RNN / nn.GRU / nn.LSTM, worked out by hand."""
    if mode == "RNN":
        G = 1
    elif mode == "GRU":
        G = 3
    elif mode == "LSTM":
        G = 4
    else:
        raise ValueError("unknown mode " + str(mode))
    if proj_size < 0:
        raise ValueError("negative proj_size")
    if proj_size and mode != "LSTM":
        raise ValueError("proj_size needs an LSTM")
    if proj_size >= hidden_size:
        raise ValueError("proj_size must be < hidden_size")
    D = 2 if bidirectional else 1
    R = proj_size if proj_size else hidden_size
    items = []
    for k in range(num_layers):
        width = input_size if k == 0 else D * R
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d == 1 else "")
            items.append(("weight_ih" + sfx, (G * hidden_size, width)))
            items.append(("weight_hh" + sfx, (G * hidden_size, R)))
            if bias:
                items += [("bias_ih" + sfx, (G * hidden_size,)), ("bias_hh" + sfx, (G * hidden_size,))]
            if proj_size:
                items.append(("weight_hr" + sfx, (proj_size, hidden_size)))
    return dict(items)
''',
        # dict dispatch (KeyError for an unknown mode), itertools.product, a helper per direction
        '''import itertools

def rnn_parameter_shapes(mode, input_size, hidden_size, num_layers=1, bias=True,
                         bidirectional=False, proj_size=0):
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
    if proj_size != 0 and (mode != "LSTM" or not 0 < proj_size < hidden_size):
        raise ValueError(f"invalid proj_size={proj_size} for {mode} with hidden_size={hidden_size}")
    out_width = proj_size or hidden_size
    suffixes = ("", "_reverse") if bidirectional else ("",)

    def one_direction(layer, suffix):
        tag = f"_l{layer}{suffix}"
        in_width = input_size if layer == 0 else len(suffixes) * out_width
        entries = {f"weight_ih{tag}": (gates * hidden_size, in_width),
                   f"weight_hh{tag}": (gates * hidden_size, out_width)}
        if bias:
            entries[f"bias_ih{tag}"] = (gates * hidden_size,)
            entries[f"bias_hh{tag}"] = (gates * hidden_size,)
        if proj_size:
            entries[f"weight_hr{tag}"] = (proj_size, hidden_size)
        return entries

    result = {}
    for layer, suffix in itertools.product(range(num_layers), suffixes):
        result.update(one_direction(layer, suffix))
    return result
''',
    ],
    "count_parameters": [
        # closed form, layer by layer, without calling Exercise 1
        '''def count_parameters(mode, input_size, hidden_size, num_layers=1, bias=True,
                     bidirectional=False, proj_size=0):
    G = {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
    D = 2 if bidirectional else 1
    R = proj_size or hidden_size
    total = 0
    for k in range(num_layers):
        width = input_size if k == 0 else D * R
        per_direction = G * hidden_size * (width + R)
        if bias:
            per_direction += 2 * G * hidden_size
        per_direction += proj_size * hidden_size
        total += D * per_direction
    return total
''',
        # Exercise 1 with functools.reduce
        '''import functools
import operator

def count_parameters(mode, input_size, hidden_size, num_layers=1, bias=True,
                     bidirectional=False, proj_size=0):
    shapes = rnn_parameter_shapes(mode, input_size, hidden_size, num_layers=num_layers, bias=bias,
                                  bidirectional=bidirectional, proj_size=proj_size)
    return sum(functools.reduce(operator.mul, shape, 1) for shape in shapes.values())
''',
    ],
    "textbook_gap": [
        # if/elif and a loop over layers and directions
        '''def textbook_gap(mode, hidden_size, num_layers=1, bidirectional=False):
    if mode == "LSTM":
        G = 4
    elif mode == "GRU":
        G = 3
    elif mode == "RNN":
        G = 1
    else:
        raise ValueError(mode)
    gap = 0
    for layer in range(num_layers):
        for direction in range(2 if bidirectional else 1):
            gap += G * hidden_size
    return gap
''',
        # from Exercise 2: with and without biases differ by two bias vectors per layer and direction
        '''def textbook_gap(mode, hidden_size, num_layers=1, bidirectional=False):
    both = count_parameters(mode, 1, hidden_size, num_layers, True, bidirectional)
    none = count_parameters(mode, 1, hidden_size, num_layers, False, bidirectional)
    return (both - none) // 2
''',
    ],
}

_SHAPES_REF = '''def rnn_parameter_shapes(mode, input_size, hidden_size, num_layers=1, bias=True,
                         bidirectional=False, proj_size=0):
    blocks = {"RNN": 1, "GRU": 3, "LSTM": 4}
    if mode not in blocks:
        raise ValueError(mode)
    if proj_size != 0 and mode != "LSTM":
        raise ValueError("proj_size is only supported for LSTM")
    if proj_size < 0 or (proj_size > 0 and proj_size >= hidden_size):
        raise ValueError("bad proj_size")
    rows = blocks[mode] * hidden_size
    width = proj_size if proj_size > 0 else hidden_size
    directions = ["", "_reverse"] if bidirectional else [""]
    shapes = {}
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else len(directions) * width
        for suffix in directions:
            tag = f"_l{layer}{suffix}"
            shapes["weight_ih" + tag] = (rows, layer_input)
            shapes["weight_hh" + tag] = (rows, width)
            if proj_size > 0:
                shapes["weight_hr" + tag] = (proj_size, hidden_size)
            if bias:
                shapes["bias_ih" + tag] = (rows,)
                shapes["bias_hh" + tag] = (rows,)
    return shapes
'''


def _edit(source, old, new):
    assert old in source, old
    return source.replace(old, new)


# _SHAPES_REF itself is wrong in one place (weight_hr before the biases); each entry below
# starts from it, puts weight_hr back last unless that is the mistake, and adds one mistake.
_HR_LAST = _edit(_edit(_SHAPES_REF, '''            if proj_size > 0:
                shapes["weight_hr" + tag] = (proj_size, hidden_size)
            if bias:''', "            if bias:"),
                 '''                shapes["bias_hh" + tag] = (rows,)
''', '''                shapes["bias_hh" + tag] = (rows,)
            if proj_size > 0:
                shapes["weight_hr" + tag] = (proj_size, hidden_size)
''')

WRONG = [
    # weight_hr before the biases
    ("rnn_parameter_shapes", _SHAPES_REF, "test_rnn_parameter_shapes_proj", "named_parameters() goes layer by layer"),
    # layer k > 0 sized with H instead of D * H
    ("rnn_parameter_shapes", _edit(_HR_LAST, "len(directions) * width", "width"),
     "test_rnn_parameter_shapes_stacks", "layer k > 0 reads"),
    # weight_hh ignores the projection
    ("rnn_parameter_shapes", _edit(_HR_LAST, 'shapes["weight_hh" + tag] = (rows, width)',
                                   'shapes["weight_hh" + tag] = (rows, hidden_size)'),
     "test_rnn_parameter_shapes_proj", "recurrent input is the projected h"),
    # proj_size accepted for GRU and RNN
    ("rnn_parameter_shapes", _edit(_HR_LAST, 'if proj_size != 0 and mode != "LSTM":', "if False:"),
     "test_rnn_parameter_shapes_errors", "only LSTM has projections"),
    # the shapes read off a module on the meta device
    ("rnn_parameter_shapes", '''def rnn_parameter_shapes(mode, input_size, hidden_size, num_layers=1, bias=True,
                         bidirectional=False, proj_size=0):
    extra = {"proj_size": proj_size} if proj_size else {}
    module = getattr(torch.nn, mode)(input_size, hidden_size, num_layers=num_layers, bias=bias,
                                     bidirectional=bidirectional, device="meta", **extra)
    return {name: tuple(p.shape) for name, p in module.named_parameters()}
''', "test_rnn_parameter_shapes", "must be pure arithmetic"),
    # the one-bias textbook formula
    ("count_parameters", '''def count_parameters(mode, input_size, hidden_size, num_layers=1, bias=True,
                     bidirectional=False, proj_size=0):
    G = {"RNN": 1, "GRU": 3, "LSTM": 4}[mode]
    return G * (input_size * hidden_size + hidden_size ** 2 + hidden_size)
''', "test_count_parameters", "you counted 80,400"),
    # a float
    ("count_parameters", '''def count_parameters(mode, input_size, hidden_size, num_layers=1, bias=True,
                     bidirectional=False, proj_size=0):
    shapes = rnn_parameter_shapes(mode, input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
    return sum(float(math.prod(s)) for s in shapes.values())
''', "test_count_parameters", "return a Python int"),
    # forgets the directions
    ("textbook_gap", '''def textbook_gap(mode, hidden_size, num_layers=1, bidirectional=False):
    return {"RNN": 1, "GRU": 3, "LSTM": 4}[mode] * hidden_size * num_layers
''', "test_textbook_gap", "one extra bias vector"),
]
