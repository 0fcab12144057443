"""Notebook 04 (bidirectional layout, packed sequences): other correct answers, and wrong ones.

The format of ALTERNATIVES and WRONG: tests/alternatives/README.md.
"""

ALTERNATIVES = {
    "split_directions": [
        # torch.split along the last dimension
        '''def split_directions(output, hidden_size):
    """Split a bidirectional output into (forward, backward) halves of its last dimension."""
    if output.size(-1) != 2 * hidden_size:
        raise ValueError("expected a last dimension of 2 * hidden_size")
    forward, backward = torch.split(output, hidden_size, dim=-1)
    return forward, backward
''',
        # narrow on an explicit dimension index, a list as the pair
        '''def split_directions(output, hidden_size):
    last = output.dim() - 1
    width = output.shape[last]
    if width != hidden_size * 2:
        raise ValueError(f"last dimension {width} != 2 * {hidden_size}")
    return [output.narrow(last, 0, hidden_size), output.narrow(last, hidden_size, hidden_size)]
''',
        # unflatten the last dimension into (2, H) and unbind the direction axis
        '''def split_directions(output, hidden_size):
    if output.shape[-1] != 2 * hidden_size:
        raise ValueError("this output does not have two directions of hidden_size")
    per_direction = output.unflatten(-1, (2, hidden_size))     # (..., 2, H)
    return tuple(per_direction.unbind(dim=-2))
''',
    ],
    "h_n_by_layer": [
        # view with D from int(bidirectional)
        '''def h_n_by_layer(h_n, num_layers, bidirectional):
    D = int(bidirectional) + 1
    rows, B, H = h_n.shape
    if rows != num_layers * D:
        raise ValueError(f"{rows} rows, but {num_layers} layers x {D} directions")
    return h_n.view(num_layers, D, B, H)
''',
        # loops and stack: row l * D + d
        '''def h_n_by_layer(h_n, num_layers, bidirectional):
    directions = 2 if bidirectional else 1
    if len(h_n) != num_layers * directions:
        raise ValueError("wrong number of rows in h_n")
    layers = []
    for layer in range(num_layers):
        layers.append(torch.stack([h_n[layer * directions + d] for d in range(directions)]))
    return torch.stack(layers)
''',
        # unflatten, turning PyTorch's size error into ValueError
        '''def h_n_by_layer(h_n, num_layers, bidirectional):
    try:
        return h_n.unflatten(0, (num_layers, 2 if bidirectional else 1))
    except RuntimeError as err:
        raise ValueError(f"h_n does not have num_layers * num_directions rows: {err}") from err
''',
    ],
    "top_layer_final": [
        # the last D rows, concatenated
        '''def top_layer_final(h_n, num_layers, bidirectional):
    if bidirectional:
        return torch.cat((h_n[-2], h_n[-1]), dim=1)
    return h_n[-1]
''',
        # view, move the direction axis next to H, flatten
        '''def top_layer_final(h_n, num_layers, bidirectional):
    D = 2 if bidirectional else 1
    _, B, H = h_n.shape
    top = h_n.view(num_layers, D, B, H)[num_layers - 1]        # (D, B, H)
    return top.permute(1, 0, 2).reshape(B, D * H)
''',
        # einsum-free but index arithmetic: rows (L-1)*D + d
        '''def top_layer_final(h_n, num_layers, bidirectional):
    D = 2 if bidirectional else 1
    first = (num_layers - 1) * D
    parts = [h_n[first + d] for d in range(D)]
    return torch.hstack(parts)
''',
    ],
    "make_packed_batch": [
        # the one-call function
        '''def make_packed_batch(seqs):
    return pack_sequence(seqs, enforce_sorted=False)
''',
        # batch-first padding, a Python list of lengths
        '''def make_packed_batch(seqs):
    lengths = [len(s) for s in seqs]
    padded = pad_sequence(seqs, batch_first=True)
    return pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
''',
        # int32 CPU lengths (PyTorch casts them), time-major padding
        '''def make_packed_batch(seqs):
    lens = torch.tensor([x.size(0) for x in seqs], dtype=torch.int32)
    return pack_padded_sequence(pad_sequence(seqs), lens.cpu(), enforce_sorted=False)
''',
    ],
    "final_from_output": [
        # a Python loop over the batch
        '''def final_from_output(output, lengths=None, batch_first=False, bidirectional=True):
    if batch_first:
        output = output.transpose(0, 1)
    T, B, DH = output.shape
    if lengths is None:
        lengths = [T] * B
    rows = []
    for b in range(B):
        n = int(lengths[b])
        if bidirectional:
            H = DH // 2
            rows.append(torch.cat([output[n - 1, b, :H], output[0, b, H:]]))
        else:
            rows.append(output[n - 1, b])
    return torch.stack(rows)
''',
        # gather along time in a batch-first layout
        '''def final_from_output(output, lengths=None, batch_first=False, bidirectional=True):
    out = output if batch_first else output.permute(1, 0, 2)          # (B, T, D*H)
    B, T, DH = out.shape
    if lengths is None:
        idx = torch.full((B,), T - 1, dtype=torch.long)
    else:
        idx = torch.as_tensor(lengths, dtype=torch.long) - 1
    idx = idx.to(out.device).view(B, 1, 1).expand(B, 1, DH)
    last = out.gather(1, idx).squeeze(1)                               # (B, D*H)
    if not bidirectional:
        return last
    H = DH // 2
    return torch.cat((last[:, :H], out[:, 0, H:]), dim=1)
''',
        # split the directions first, then index each
        '''def final_from_output(output, lengths=None, batch_first=False, bidirectional=True):
    time_major = output.transpose(0, 1) if batch_first else output
    steps, batch = time_major.shape[0], time_major.shape[1]
    ends = (torch.tensor([steps] * batch) if lengths is None
            else torch.tensor([int(n) for n in lengths])) - 1
    rows = torch.arange(batch)
    if not bidirectional:
        return time_major[ends, rows]
    fwd, bwd = time_major.chunk(2, dim=-1)
    return torch.cat([fwd[ends, rows], bwd[0]], dim=-1)
''',
    ],
}

WRONG = [
    ("split_directions",
     '''def split_directions(output, hidden_size):
    if output.shape[-1] != 2 * hidden_size:
        raise ValueError("not bidirectional")
    return output[..., hidden_size:], output[..., :hidden_size]
''', "test_split_directions", "that is the backward half"),
    ("split_directions",
     '''def split_directions(output, hidden_size):
    if output.shape[-1] != 2 * hidden_size:
        raise ValueError("not bidirectional")
    return output[:, :, :hidden_size], output[:, :, hidden_size:]
''', "test_split_directions_2d", "raised IndexError"),
    ("split_directions",
     '''def split_directions(output, hidden_size):
    return tuple(output.chunk(2, dim=-1))
''', "test_split_directions_error", "returned without an error"),
    ("h_n_by_layer",
     '''def h_n_by_layer(h_n, num_layers, bidirectional):
    D = 2 if bidirectional else 1
    if h_n.shape[0] != num_layers * D:
        raise ValueError("wrong number of rows")
    return h_n.view(D, num_layers, *h_n.shape[1:]).transpose(0, 1)
''', "test_h_n_by_layer", "direction-major"),
    ("h_n_by_layer",
     '''def h_n_by_layer(h_n, num_layers, bidirectional):
    return h_n.view(num_layers, 2 if bidirectional else 1, *h_n.shape[1:])
''', "test_h_n_by_layer_error", "the docstring asks for ValueError"),
    ("top_layer_final",
     '''def top_layer_final(h_n, num_layers, bidirectional):
    return h_n[-1]
''', "test_top_layer_final", "only the backward half"),
    ("top_layer_final",
     '''def top_layer_final(h_n, num_layers, bidirectional):
    if bidirectional:
        return torch.cat([h_n[-2], h_n[-1]], -1)
    return h_n[0]
''', "test_top_layer_final_unidirectional", "you read layer 0"),
    ("make_packed_batch",
     '''def make_packed_batch(seqs):
    return pack_sequence(seqs)
''', "test_make_packed_batch", "enforce_sorted"),
    ("make_packed_batch",
     '''def make_packed_batch(seqs):
    lengths = torch.tensor([len(s) for s in seqs], device=seqs[0].device)
    return pack_padded_sequence(pad_sequence(seqs), lengths, enforce_sorted=False)
''', "test_make_packed_batch_device", "1D CPU int64 tensor"),
    ("final_from_output",
     '''def final_from_output(output, lengths=None, batch_first=False, bidirectional=True):
    if batch_first:
        output = output.transpose(0, 1)
    T, B, DH = output.shape
    last = torch.full((B,), T - 1) if lengths is None else torch.as_tensor(lengths) - 1
    picked = output[last, torch.arange(B)]
    return picked                       # both halves at length - 1
''', "test_final_from_output_lengths", "the backward direction finishes at t = 0"),
    ("final_from_output",
     '''def final_from_output(output, lengths=None, batch_first=False, bidirectional=True):
    T, B, DH = output.shape                   # batch_first ignored
    last = torch.full((B,), T - 1) if lengths is None else torch.as_tensor(lengths) - 1
    fwd = output[last, torch.arange(B)]
    if not bidirectional:
        return fwd
    return torch.cat([fwd[:, :DH // 2], output[0, :, DH // 2:]], -1)
''', "test_final_from_output_batch_first", "batch_first"),
    ("final_from_output",
     '''def final_from_output(output, lengths=None, batch_first=False, bidirectional=True):
    if batch_first:
        output = output.transpose(0, 1)
    T, B, DH = output.shape
    last = torch.full((B,), T - 1) if lengths is None else torch.as_tensor(lengths) - 1
    fwd = output[last, torch.arange(B)]
    return torch.cat([fwd[:, :DH // 2], output[0, :, DH // 2:]], -1)   # bidirectional ignored
''', "test_final_from_output_unidirectional", "bidirectional=False"),
]
