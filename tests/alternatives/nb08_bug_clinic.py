"""Notebook 08 (bug clinic): other correct answers, and wrong ones.

The format of ALTERNATIVES and WRONG: tests/alternatives/README.md.
"""

ALTERNATIVES = {
    "batch_invariance": [
        # all singles at once, then one comparison; reversal by index; max-abs instead of allclose
        '''def batch_invariance(model, x, atol=1e-5):
    def run(inp):
        out = model(inp)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach()

    whole = run(x)
    singles = torch.cat([run(x[b:b + 1]) for b in range(len(x))], dim=0)
    backwards = torch.arange(len(x) - 1, -1, -1)
    reversed_run = run(x[backwards])
    return bool((singles - whole).abs().max() <= atol) and bool((reversed_run - whole[backwards]).abs().max() <= atol)
''',
        # a generator of comparisons and all(); isclose
        '''def batch_invariance(model, x, atol=1e-5):
    """Every sample's result must not depend on its neighbours or its place."""
    first = lambda y: y[0] if type(y) in (tuple, list) else y
    with torch.no_grad():
        y = first(model(x))
        runs = [(first(model(x[i:i + 1])), y[i:i + 1]) for i in range(x.size(0))]
        runs.append((first(model(torch.flip(x, dims=[0]))), torch.flip(y, dims=[0])))
    return all(torch.isclose(a, b, atol=atol).all().item() for a, b in runs)
''',
    ],
    "padding_invariance": [
        # F.pad for the extra steps, a list of (alone, other) pairs
        '''import torch.nn.functional as F

def padding_invariance(model, x, lengths, atol=1e-5):
    def out(inp):
        y = model(inp)
        return y[0] if isinstance(y, (tuple, list)) else y

    lengths = torch.as_tensor(lengths).tolist()
    extra = F.pad(x, (0, 0) * (x.dim() - 2) + (0, 3))          # three zero steps at the end of axis 1
    with torch.no_grad():
        padded, more = out(x), out(extra)
        pairs = []
        for b, n in enumerate(lengths):
            alone = out(x[b:b + 1, :n])
            if padded.ndim > 2:
                pairs += [(alone[0, :n], padded[b, :n]), (alone[0, :n], more[b, :n])]
            else:
                pairs += [(alone[0], padded[b]), (alone[0], more[b])]
    return all(a.shape == o.shape and torch.allclose(a, o, atol=atol) for a, o in pairs)
''',
        # early exits, isclose, new_zeros
        '''def padding_invariance(model, x, lengths, atol=1e-5):
    B = x.shape[0]
    zeros = x.new_zeros((B, 3) + tuple(x.shape[2:]))
    results = []
    with torch.no_grad():
        for inp in (x, torch.cat((x, zeros), 1)):
            r = model(inp)
            results.append(r[0] if isinstance(r, (list, tuple)) else r)
        for b in range(B):
            n = int(lengths[b])
            r = model(x[b:b + 1, :n])
            alone = (r[0] if isinstance(r, (list, tuple)) else r)[0]
            for res in results:
                got = res[b, :n] if res.dim() >= 3 else res[b]
                want = alone[:n] if res.dim() >= 3 else alone
                if got.shape != want.shape or not torch.isclose(got, want, atol=atol).all():
                    return False
    return True
''',
    ],
    "direction_sensitivity": [
        # the whole Jacobian at once
        '''def direction_sensitivity(model, x1, step=-1):
    def features(inp):
        y = model(inp)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y[0, step] if y.dim() == 3 else y[0]

    jac = torch.autograd.functional.jacobian(features, x1.detach())    # (F, 1, T, I)
    per_step = jac.abs().sum(dim=(1, 3))                                # (F, T)
    half = per_step.shape[0] // 2
    return torch.stack([per_step[:half].sum(dim=0), per_step[half:].sum(dim=0)])
''',
        # .backward() one feature at a time on a fresh leaf, reading .grad
        '''def direction_sensitivity(model, x1, step=-1):
    T = x1.shape[1]
    result = torch.zeros(2, T, dtype=x1.dtype)
    probe = x1.detach().clone()
    n_features = None
    j = 0
    while n_features is None or j < n_features:
        leaf = probe.clone().requires_grad_(True)
        y = model(leaf)
        y = y[0] if isinstance(y, (tuple, list)) else y
        feats = y[0, step] if y.dim() >= 3 else y[0]
        n_features = feats.numel()
        feats[j].backward()
        if leaf.grad is not None:
            result[0 if j < n_features // 2 else 1] += leaf.grad[0].abs().sum(dim=1)
        j += 1
    return result
''',
    ],
    "state_consistency": [
        # gathered all at once
        '''def state_consistency(output, h_n, lengths=None, atol=1e-5):
    B, T, DH = output.shape
    H = h_n.size(-1)
    D = DH // H
    if lengths is None:
        last = torch.full((B,), T - 1, dtype=torch.long)
    else:
        last = torch.as_tensor(lengths, dtype=torch.long).cpu() - 1
    rows = torch.arange(B)
    forward_ok = torch.allclose(h_n[-D], output[rows, last, :H], atol=atol)
    backward_ok = D == 1 or torch.allclose(h_n[-1], output[:, 0, H:], atol=atol)
    return bool(forward_ok and backward_ok)
''',
        # h_n regrouped by layer and direction, one sequence at a time
        '''def state_consistency(output, h_n, lengths=None, atol=1e-5):
    H = h_n.shape[2]
    D = output.shape[2] // H
    L = h_n.shape[0] // D
    top = h_n.reshape(L, D, h_n.shape[1], H)[L - 1]       # (D, B, H)
    for b in range(output.shape[0]):
        n = output.shape[1] if lengths is None else int(lengths[b])
        if (top[0, b] - output[b, n - 1, :H]).abs().max() > atol:
            return False
        if D == 2 and (top[1, b] - output[b, 0, H:2 * H]).abs().max() > atol:
            return False
    return True
''',
    ],
    "step_errors": [
        # permute and max over the flattened rest
        '''def step_errors(model, reference, x):
    a = model(x)
    b = reference(x)
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError("the two results have different shapes")
    diff = (a - b).detach().abs().permute(1, 0, 2)
    return diff.reshape(diff.shape[0], -1).max(dim=1).values
''',
        # a loop over the steps
        '''def step_errors(model, reference, x):
    with torch.no_grad():
        got = model(x)
        want = reference(x)
    if isinstance(got, tuple):
        got = got[0]
    if isinstance(want, tuple):
        want = want[0]
    if got.size() != want.size():
        raise ValueError(f"shapes differ: {list(got.size())} vs {list(want.size())}")
    return torch.stack([(got[:, t] - want[:, t]).abs().max() for t in range(got.size(1))])
''',
    ],
    "unreached_parameters": [
        # .backward(), with the old gradients put back afterwards
        '''def unreached_parameters(model, x, index=0):
    params = dict(model.named_parameters())
    saved = {name: p.grad for name, p in params.items()}
    for p in params.values():
        p.grad = None
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[index]
    parts = out if isinstance(out, (tuple, list)) else [out]
    total = parts[0].sum()
    for t in parts[1:]:
        total = total + t.sum()
    total.backward()
    missing = [name for name, p in params.items() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    for name, p in params.items():
        p.grad = saved[name]
    return sorted(missing)
''',
        # autograd.grad over a dict of parameters
        '''def unreached_parameters(model, x, index=0):
    result = model(x)
    if type(result) in (tuple, list):
        result = result[index]
    if type(result) in (tuple, list):
        loss = torch.stack([t.sum() for t in result]).sum()
    else:
        loss = result.sum()
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    unreached = []
    for name, g in zip(params, grads):
        if g is None or g.abs().max() == 0:
            unreached.append(name)
    unreached.sort()
    return unreached
''',
    ],
    "diagnose_tagger": [
        '''def diagnose_tagger():
    """The check that exposes mystery 1's bug: one of the strings in CHECKS."""
    return "state"      # tagger.lstm's h_n is not the output at each sentence's last real step
''',
        '''def diagnose_tagger():
    found = {"batch": False, "padding": True, "state": True}
    return [name for name, flagged in found.items() if flagged][0]
''',
    ],
    "diagnose_classifier": [
        '''def diagnose_classifier():
    """The check that exposes mystery 2's bug: one of the strings in CHECKS."""
    return 'batch'
''',
        '''def diagnose_classifier():
    answer = "batch"    # right for one sample, wrong for six: the samples are mixed
    return answer
''',
    ],
    "diagnose_reader": [
        '''def diagnose_reader():
    """The check that exposes mystery 3's bug: one of the strings in CHECKS."""
    return "reachability"    # lstm.weight_hh_l0_reverse gets a zero gradient
''',
        '''def diagnose_reader():
    return "direction"
''',
    ],
    "diagnose_encoder": [
        '''def diagnose_encoder():
    """The check that exposes mystery 4's bug: one of the strings in CHECKS."""
    return "reachability"
''',
        '''def diagnose_encoder():
    checks = ("batch", "padding", "direction", "state", "reference", "reachability")
    return checks[-1]
''',
    ],
    "diagnose_stack": [
        '''def diagnose_stack():
    """The check that exposes mystery 5's bug: one of the strings in CHECKS."""
    return "reference"
''',
        '''def diagnose_stack():
    # step_errors against twin_of(layers): big at t = 0, then fading
    return str("reference")
''',
    ],
    "run_padded": [
        # lengths as a Python list, counted from the nonzero rows
        '''def run_padded(rnn, x):
    lengths = x.abs().sum(dim=-1).gt(0).sum(dim=1).tolist()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_out, state = rnn(packed)
    output, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.size(1))
    return output, state
''',
        # sort by hand, pack sorted, then undo the permutation of output and states
        '''def run_padded(rnn, x):
    lengths = (x != 0).any(dim=-1).long().sum(dim=1).cpu()
    sorted_lengths, order = torch.sort(lengths, descending=True)
    undo = torch.argsort(order)
    packed = pack_padded_sequence(x[order.to(x.device)], sorted_lengths, batch_first=True)
    out, state = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    out = out[undo.to(x.device)]
    if isinstance(state, tuple):
        state = tuple(s[:, undo.to(s.device)] for s in state)
    else:
        state = state[:, undo.to(state.device)]
    return out, state
''',
    ],
    "LayerStateClassifier": [
        # permute + flatten; widths read back from the LSTM
        '''class LayerStateClassifier(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, num_classes, bidirectional=False, proj_size=0):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                           proj_size=proj_size, batch_first=True)
        rows = num_layers * (2 if self.rnn.bidirectional else 1)
        width = self.rnn.proj_size if self.rnn.proj_size else self.rnn.hidden_size
        self.head = nn.Linear(rows * width, num_classes)

    def forward(self, x):
        h_n = self.rnn(x)[1][0]
        return self.head(h_n.permute(1, 0, 2).flatten(start_dim=1))
''',
        # concatenate the rows of h_n one after another
        '''class LayerStateClassifier(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, num_classes, bidirectional=False, proj_size=0):
        super().__init__()
        directions = 2 if bidirectional else 1
        out_size = proj_size or hidden_size
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers, True, True, 0.0, bidirectional, proj_size)
        self.head = nn.Linear(num_layers * directions * out_size, num_classes)

    def forward(self, x):
        _, (h, _c) = self.rnn(x)
        features = torch.cat([h[k] for k in range(h.shape[0])], dim=1)     # row b: h[0, b], h[1, b], ...
        return self.head(features)
''',
    ],
    "stacked_rnn": [
        # h0 split with chunk, finals gathered with a dict of lists
        '''def stacked_rnn(layers, x, h0=None):
    L = len(layers)
    lstm = type(layers[0]) is nn.LSTM
    if h0 is None:
        starts = [None] * L
    elif lstm:
        starts = list(zip(h0[0].chunk(L, dim=0), h0[1].chunk(L, dim=0)))
    else:
        starts = list(h0.chunk(L, dim=0))
    finals = {"h": [], "c": []}
    seq = x
    for layer, start in zip(layers, starts):
        seq, last = layer(seq, start)
        if lstm:
            finals["h"].append(last[0])
            finals["c"].append(last[1])
        else:
            finals["h"].append(last)
    h_n = torch.cat(finals["h"])
    if lstm:
        return seq, (h_n, torch.cat(finals["c"]))
    return seq, h_n
''',
        # narrow() for each layer's rows, recursion-free index arithmetic
        '''def stacked_rnn(layers, x, h0=None):
    num_dirs = 2 if layers[0].bidirectional else 1
    hs, cs = [], []
    output = x
    for k in range(len(layers)):
        if h0 is None:
            init = None
        elif isinstance(h0, tuple):
            init = tuple(t.narrow(0, k * num_dirs, num_dirs) for t in h0)
        else:
            init = h0.narrow(0, k * num_dirs, num_dirs)
        output, final = layers[k](output, init)
        if isinstance(final, tuple):
            hs.append(final[0])
            cs.append(final[1])
        else:
            hs.append(final)
    if cs:
        return output, (torch.cat(hs, 0), torch.cat(cs, 0))
    return output, torch.cat(hs, 0)
''',
    ],
}

WRONG = [
    # only the permutation experiment: batch statistics survive a reversal
    ("batch_invariance", '''def batch_invariance(model, x, atol=1e-5):
    y = model(x)
    y = y[0] if isinstance(y, (tuple, list)) else y
    r = model(x.flip(0))
    r = r[0] if isinstance(r, (tuple, list)) else r
    return torch.allclose(r, y.flip(0), atol=atol)
''', "test_batch_invariance", "nn.BatchNorm1d in training mode"),
    # no run with more padding: a batch without padding looks fine
    ("padding_invariance", '''def padding_invariance(model, x, lengths, atol=1e-5):
    y = model(x)
    y = y[0] if isinstance(y, (tuple, list)) else y
    for b, n in enumerate([int(v) for v in lengths]):
        a = model(x[b:b + 1, :n])
        a = (a[0] if isinstance(a, (tuple, list)) else a)[0]
        got, want = (y[b, :n], a[:n]) if y.dim() >= 3 else (y[b], a)
        if not torch.allclose(got, want, atol=atol):
            return False
    return True
''', "test_padding_invariance", "only the run with 3 more zero steps"),
    # halves the wrong way round
    ("direction_sensitivity", '''def direction_sensitivity(model, x1, step=-1):
    x = x1.detach().clone().requires_grad_(True)
    y = model(x)
    y = y[0] if isinstance(y, (tuple, list)) else y
    f = y[0, step] if y.dim() >= 3 else y[0]
    S = torch.zeros(2, x.shape[1], dtype=x.dtype)
    for j in range(f.shape[0]):
        g, = torch.autograd.grad(f[j], x, retain_graph=True)
        S[1 if j < f.shape[0] // 2 else 0] += g[0].abs().sum(-1)
    return S
''', "test_direction_sensitivity", "S = [[3, 3, 0, 0], [0, 0, 3, 3]]"),
    # both halves read at the last real step
    ("state_consistency", '''def state_consistency(output, h_n, lengths=None, atol=1e-5):
    B, T, W = output.shape
    H = h_n.shape[-1]
    D = W // H
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        if not torch.allclose(h_n[-D:, b].reshape(-1), output[b, n - 1], atol=atol):
            return False
    return True
''', "test_state_consistency", "a packed run of a 2-layer BiLSTM"),
    # the mean error instead of the largest
    ("step_errors", '''def step_errors(model, reference, x):
    a, b = model(x), reference(x)
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    if a.shape != b.shape:
        raise ValueError("shapes differ")
    return (a - b).abs().mean(dim=(0, 2))
''', "test_step_errors", "differ by 0.5 at every step"),
    # only parameters with no gradient at all; zero gradients missed
    ("unreached_parameters", '''def unreached_parameters(model, x, index=0):
    y = model(x)
    if isinstance(y, (tuple, list)):
        y = y[index]
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    named = list(model.named_parameters())
    grads = torch.autograd.grad(sum(t.sum() for t in ys), [p for _, p in named], allow_unused=True)
    return sorted(n for (n, _), g in zip(named, grads) if g is None)
''', "test_unreached_parameters", "W_hh multiplies the zero initial state"),
    # the mystery itself: no packing
    ("run_padded", '''def run_padded(rnn, x):
    return rnn(x)
''', "test_run_padded_output", "only in the backward half"),
    # unpacked without total_length
    ("run_padded", '''def run_padded(rnn, x):
    lengths = (x != 0).any(dim=2).sum(dim=1).cpu()
    out, state = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    return pad_packed_sequence(out, batch_first=True)[0], state
''', "test_run_padded_output", "with the T of x"),
    # sorted by hand, states left in sorted order
    ("run_padded", '''def run_padded(rnn, x):
    lengths = (x != 0).any(dim=2).sum(dim=1).cpu()
    order = lengths.argsort(descending=True)
    out, state = rnn(pack_padded_sequence(x[order], lengths[order], batch_first=True))
    out = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
    return out[order.argsort()], state
''', "test_run_padded_state", "batch order was not restored"),
    # reshape instead of transpose: the samples mix
    ("LayerStateClassifier", '''class LayerStateClassifier(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, num_classes, bidirectional=False, proj_size=0):
        super().__init__()
        D = 2 if bidirectional else 1
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                           bidirectional=bidirectional, proj_size=proj_size)
        self.head = nn.Linear(num_layers * D * (proj_size or hidden_size), num_classes)

    def forward(self, x):
        _, (h_n, _) = self.rnn(x)
        return self.head(h_n.reshape(x.shape[0], -1))
''', "test_LayerStateClassifier_forward", "the batch is its SECOND axis"),
    # the head sized hidden_size * num_layers
    ("LayerStateClassifier", '''class LayerStateClassifier(nn.Module):
    def __init__(self, input_size, hidden_size, num_layers, num_classes, bidirectional=False, proj_size=0):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                           bidirectional=bidirectional, proj_size=proj_size)
        self.head = nn.Linear(hidden_size * num_layers, num_classes)

    def forward(self, x):
        _, (h_n, _) = self.rnn(x)
        return self.head(h_n.transpose(0, 1).reshape(x.shape[0], -1))
''', "test_LayerStateClassifier_head", "rows of h_n for the sample"),
    # the mystery itself: final states fed upward
    ("stacked_rnn", '''def stacked_rnn(layers, x, h0=None):
    out, state = x, h0
    for layer in layers:
        out, state = layer(out, state)
    return out, state
''', "test_stacked_rnn_gru", "largest at the first steps"),
    # the right numbers from a copy of the weights: no gradient reaches the layers
    ("stacked_rnn", '''def stacked_rnn(layers, x, h0=None):
    f = layers[0]
    twin = type(f)(f.input_size, f.hidden_size, len(layers), bias=f.bias, batch_first=f.batch_first,
                   bidirectional=f.bidirectional)
    state = {}
    for k, layer in enumerate(layers):
        for name, p in layer.state_dict().items():
            state[name.replace("_l0", f"_l{k}")] = p
    twin.load_state_dict(state)
    return twin(x, h0)
''', "test_stacked_rnn_gradients", "received no gradient"),
    # a check that does not apply to the code's contract
    ("diagnose_classifier", '''def diagnose_classifier():
    return "padding"
''', "test_diagnose_classifier", "the padding check does not apply"),
    ("diagnose_encoder", '''def diagnose_encoder():
    return "state"
''', "test_diagnose_encoder", "which rows of h_n are handed on"),
]
