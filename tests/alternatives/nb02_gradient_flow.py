"""Notebook 02 (why gates exist: gradient flow): other correct answers, and wrong ones.

The format of ALTERNATIVES and WRONG: tests/alternatives/README.md.
"""

ALTERNATIVES = {
    "input_gradient_norms": [
        # .backward() and .grad, flatten each step, Tensor.norm
        '''def input_gradient_norms(rnn, x):
    xg = x.clone().detach()
    xg.requires_grad = True
    out = rnn(xg)[0]
    loss = out[-1].sum()
    loss.backward()
    return xg.grad.flatten(start_dim=1).norm(dim=1)
''',
        # autograd.grad with grad_outputs, a square root per step in a loop
        '''def input_gradient_norms(rnn, x):
    inp = x.detach().clone().requires_grad_()
    output, hidden = rnn(inp)
    last = output[-1]
    grads = torch.autograd.grad(outputs=last, inputs=inp, grad_outputs=torch.ones_like(last))[0]
    return torch.stack([torch.sqrt((grads[t] ** 2).sum()) for t in range(grads.shape[0])])
''',
        # einsum for the squared norms
        '''def input_gradient_norms(rnn, x):
    leaf = x.detach().requires_grad_(True)
    top_last = rnn(leaf)[0][x.shape[0] - 1]
    (g,) = torch.autograd.grad(top_last.sum(), [leaf])
    return torch.einsum("tbi,tbi->t", g, g).sqrt()
''',
    ],
    "clip_grad_norm": [
        # a running sum of squares, multiply through .grad
        '''def clip_grad_norm(parameters, max_norm):
    params = [p for p in parameters if p.grad is not None]
    total_sq = torch.tensor(0.0)
    for p in params:
        total_sq = total_sq + (p.grad.detach() ** 2).sum()
    total = total_sq.sqrt()
    if total > max_norm:
        coef = max_norm / (total + 1e-6)
        for p in params:
            p.grad.mul_(coef)
    return total
''',
        # one long vector with torch.cat, in-place *=, a factor below 1 means "clip"
        '''def clip_grad_norm(parameters, max_norm):
    grads = [p.grad for p in list(parameters) if p.grad is not None]
    if len(grads) == 0:
        return torch.zeros(())
    total = torch.cat([g.reshape(-1) for g in grads]).norm(2)
    factor = max_norm / (total + 1e-6)
    if factor < 1:
        for g in grads:
            g *= factor
    return total
''',
        # under no_grad, per-tensor norms with Tensor.norm and math on a Python float
        '''def clip_grad_norm(parameters, max_norm):
    with torch.no_grad():
        grads = []
        for p in parameters:
            if p.grad is not None:
                grads.append(p.grad)
        if not grads:
            return torch.tensor(0.0)
        norms = torch.stack([g.norm() for g in grads])
        total = norms.norm()
        t = total.item()
        if t > max_norm:
            for g in grads:
                g.mul_(max_norm / (t + 1e-6))
    return total
''',
    ],
    "set_forget_bias": [
        # layer by layer, direction by direction, getattr and fill_
        '''def set_forget_bias(lstm, value):
    H = lstm.hidden_size
    suffixes = [""] + (["_reverse"] if lstm.bidirectional else [])
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            for sfx in suffixes:
                getattr(lstm, f"bias_ih_l{layer}{sfx}")[H:2 * H].fill_(value)
                getattr(lstm, f"bias_hh_l{layer}{sfx}")[H:2 * H].fill_(0)
    return lstm
''',
        # through the state dict (its tensors share the parameters' storage), then load it back
        '''def set_forget_bias(lstm, value):
    H = lstm.hidden_size
    state = lstm.state_dict()
    for name in state:
        if "bias_ih" in name:
            state[name][H:2 * H] = value
        if "bias_hh" in name:
            state[name][H:2 * H] = 0
    lstm.load_state_dict(state)
    return lstm
''',
        # chunk(4) gives views of the gate blocks: fill the forget block in place
        '''def set_forget_bias(lstm, value):
    for name, param in lstm.named_parameters():
        if not name.startswith("bias"):
            continue
        i, f, g, o = param.data.chunk(4)
        f.fill_(value if "_ih_" in name else 0.0)
    return lstm
''',
    ],
    "run_in_chunks": [
        # torch.split into chunks, a helper that detaches a tensor or a tuple
        '''def _detach(state):
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def run_in_chunks(rnn, x, chunk, hx=None):
    if rnn.bidirectional:
        raise ValueError("bidirectional modules cannot be run in chunks")
    state = hx
    pieces = []
    for part in torch.split(x, chunk, dim=0):
        out, state = rnn(part, state)
        pieces.append(out)
        state = _detach(state)
    return torch.cat(pieces, dim=0), state
''',
        # a while loop, the state detached before each call, nn.LSTM told apart by isinstance
        '''def run_in_chunks(rnn, x, chunk, hx=None):
    if getattr(rnn, "bidirectional", False):
        raise ValueError("cannot run a bidirectional RNN chunk by chunk")
    T = x.size(0)
    outs = []
    h = hx
    t = 0
    while t < T:
        if h is not None:
            h = (h[0].detach(), h[1].detach()) if isinstance(rnn, nn.LSTM) else h.detach()
        y, h = rnn(x[t:min(t + chunk, T)], h)
        outs.append(y)
        t += chunk
    return torch.cat(outs), h
''',
    ],
    "make_adding_task": [
        # batch-major draws, scatter_ and gather, transposed at the end
        '''def make_adding_task(n, T, seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    half = T // 2
    vals = torch.rand(n, T, generator=g)
    i = torch.randint(half, (n, 1), generator=g)
    j = torch.randint(T - half, (n, 1), generator=g) + half
    marks = torch.zeros(n, T)
    marks.scatter_(1, i, 1.0)
    marks.scatter_(1, j, 1.0)
    y = vals.gather(1, i).squeeze(1) + vals.gather(1, j).squeeze(1)
    x = torch.stack((vals, marks), dim=2).permute(1, 0, 2).contiguous()
    return x, y
''',
        # one sequence at a time
        '''def make_adding_task(n, T, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(T, n, 2)
    x[:, :, 0] = torch.rand(T, n, generator=gen)
    y = torch.zeros(n)
    for k in range(n):
        a = int(torch.randint(0, T // 2, (1,), generator=gen))
        b = int(torch.randint(T // 2, T, (1,), generator=gen))
        x[a, k, 1] = 1.0
        x[b, k, 1] = 1.0
        y[k] = x[a, k, 0] + x[b, k, 0]
    return x, y
''',
    ],
    "claims": [
        # the whole dict written out
        '''CLAIMS = {
    "rnn_gradient_vanishes": True,
    "lstm_gradient_flat_at_init": False,
    "latch_gradient_flat": True,
    "cell_path_is_forget_product": True,
    "bias_ih_alone_sets_forget_bias": False,
    "clipping_keeps_direction": True,
    "per_parameter_clipping_is_the_same": False,
    "chunked_output_equal": True,
    "chunked_gradient_reaches_first_chunk": False,
    "bidirectional_chunked_equal": False,
}
''',
        # the template's None replaced one by one, the placeholder line deleted
        '''CLAIMS = {
    "rnn_gradient_vanishes": None,
    "lstm_gradient_flat_at_init": None,
    "latch_gradient_flat": None,
    "cell_path_is_forget_product": None,
    "bias_ih_alone_sets_forget_bias": None,
    "clipping_keeps_direction": None,
    "per_parameter_clipping_is_the_same": None,
    "chunked_output_equal": None,
    "chunked_gradient_reaches_first_chunk": None,
    "bidirectional_chunked_equal": None,
}
for key in ("rnn_gradient_vanishes", "latch_gradient_flat", "cell_path_is_forget_product",
            "clipping_keeps_direction", "chunked_output_equal"):
    CLAIMS[key] = True
for key in CLAIMS:
    if CLAIMS[key] is None:
        CLAIMS[key] = False
''',
    ],
}

_GRAD_REF = '''def input_gradient_norms(rnn, x):
    x = x.detach().requires_grad_(True)
    output, _ = rnn(x)
    (grad,) = torch.autograd.grad(output[-1].sum(), x)
    return torch.linalg.vector_norm(grad, dim=(1, 2))
'''

_CLAIMS_WRONG = ALTERNATIVES["claims"][0].replace('"chunked_output_equal": True', '"chunked_output_equal": False')

WRONG = [
    # the steps in reverse order (distance instead of time)
    ("input_gradient_norms", _GRAD_REF.replace("dim=(1, 2))", "dim=(1, 2)).flip(0)"),
     "test_input_gradient_norms_rnn", "reverse order"),
    # the loss over every step's output
    ("input_gradient_norms", _GRAD_REF.replace("output[-1].sum()", "output.sum()"),
     "test_input_gradient_norms_rnn", "over all steps"),
    # each tensor clipped on its own
    ("clip_grad_norm", '''def clip_grad_norm(parameters, max_norm):
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    for g in grads:
        n = torch.linalg.vector_norm(g)
        if n > max_norm:
            g.mul_(max_norm / (n + 1e-6))
    return total
''', "test_clip_grad_norm_scaling", "clipped on its own"),
    # PyTorch's own clipping
    ("clip_grad_norm", '''def clip_grad_norm(parameters, max_norm):
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
''', "test_clip_grad_norm_total", "written by hand"),
    # layer 0, forward direction only (the recipe often seen)
    ("set_forget_bias", '''def set_forget_bias(lstm, value):
    H = lstm.hidden_size
    with torch.no_grad():
        lstm.bias_ih_l0[H:2 * H] = value
        lstm.bias_hh_l0[H:2 * H] = 0.0
    return lstm
''', "test_set_forget_bias_all", "every layer and direction"),
    # both bias vectors set to the value: the effective bias is twice the value
    ("set_forget_bias", '''def set_forget_bias(lstm, value):
    H = lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if "bias" in name:
                p[H:2 * H] = value
    return lstm
''', "test_set_forget_bias_layer0", "forget rows must be 0"),
    # the state carried but never detached
    ("run_in_chunks", '''def run_in_chunks(rnn, x, chunk, hx=None):
    if rnn.bidirectional:
        raise ValueError("bidirectional")
    outs, state = [], hx
    for start in range(0, x.shape[0], chunk):
        out, state = rnn(x[start:start + chunk], state)
        outs.append(out)
    return torch.cat(outs), state
''', "test_run_in_chunks_gradient", "earlier chunks"),
    # no check for a bidirectional module
    ("run_in_chunks", '''def run_in_chunks(rnn, x, chunk, hx=None):
    outs, state = [], hx
    for start in range(0, x.shape[0], chunk):
        out, state = rnn(x[start:start + chunk], state)
        outs.append(out)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    return torch.cat(outs), state
''', "test_run_in_chunks_bidirectional", "raise ValueError"),
    # the global random state instead of a generator
    ("make_adding_task", '''def make_adding_task(n, T, seed=0):
    torch.manual_seed(seed)
    values = torch.rand(T, n)
    first = torch.randint(0, T // 2, (n,))
    second = torch.randint(T // 2, T, (n,))
    marks = torch.zeros(T, n)
    marks[first, torch.arange(n)] = 1.0
    marks[second, torch.arange(n)] = 1.0
    return torch.stack([values, marks], dim=-1), values[first, torch.arange(n)] + values[second, torch.arange(n)]
''', "test_make_adding_task_seed", "global random state"),
    # both marks anywhere in the sequence
    ("make_adding_task", '''def make_adding_task(n, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(T, n, generator=g)
    pos = torch.randint(0, T, (2, n), generator=g)
    marks = torch.zeros(T, n)
    marks[pos[0], torch.arange(n)] = 1.0
    marks[pos[1], torch.arange(n)] = 1.0
    y = values[pos[0], torch.arange(n)] + values[pos[1], torch.arange(n)]
    return torch.stack([values, marks], dim=-1), y
''', "test_make_adding_task_marks", "one in each half"),
    # one prediction wrong
    ("claims", _CLAIMS_WRONG, "test_claims", "disagree with your prediction"),
]
