"""Other correct answers (and plausible wrong ones) for notebook 07, written from the student
notebook alone, in other styles than the reference.

ALTERNATIVES: {answer cell grade_id: [whole answer cell source, ...]}
WRONG: [(answer cell grade_id, whole answer cell source, grade cell that must fail, phrase of its message)]

load_mnist's answer cell carries the given plumbing (_decompress_mnist, _mnist_split) above the
exercise; its sources here are the student copy's cell with the body filled in, so the plumbing
stays the notebook's own.
"""
import json
from pathlib import Path

_STUDENT = Path(__file__).resolve().parents[2] / "notebooks" / "07_mnist_row_by_row.ipynb"


def _student_cell(grade_id):
    cells = json.loads(_STUDENT.read_text(encoding="utf-8"))["cells"]
    cell = next(c for c in cells if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id)
    return "".join(cell["source"])


def _fill(grade_id, body):
    """The student copy's answer cell with `raise NotImplementedError()` replaced by `body`
    (indented like the line it replaces)."""
    source = _student_cell(grade_id)
    line = next(l for l in source.splitlines() if l.strip() == "raise NotImplementedError()")
    indent = line[:len(line) - len(line.lstrip())]
    filled = "\n".join(indent + l if l else l for l in body.strip("\n").splitlines())
    return source.replace(line, filled, 1)


LOAD_MNIST_STD_MEAN = _fill("load_mnist", '''
tr = train.data.to(torch.float32) / 255.0
te = test.data.to(torch.float32) / 255.0
std, mean = torch.std_mean(tr)
train_x = ((tr - mean) / std).unsqueeze(1)
test_x = ((te - mean) / std)[:, None]
return train_x, train.targets.clone(), test_x, test.targets.clone()
''')

LOAD_MNIST_NUMPY = _fill("load_mnist", '''
pixels = train.data.numpy().astype(np.float64) / 255
mu, sigma = pixels.mean(), pixels.std()

def standardise(images):
    scaled = (images.numpy() / 255.0 - mu) / sigma
    return torch.from_numpy(scaled.astype(np.float32)).reshape(-1, 1, 28, 28)

return standardise(train.data), train.targets.long(), standardise(test.data), test.targets.long()
''')

IMAGES_VIEW = '''
def images_to_sequences(images):
    """Images -> batch-first sequences whose time axis is the image row."""
    return images.view(-1, 28, 28)
'''

IMAGES_BY_SHAPE = '''
def images_to_sequences(images):
    """(N, 1, 28, 28), (N, 28, 28) or (N, 784) -> (N, 28, 28), one row per time step."""
    if images.dim() == 4:
        return images.squeeze(1)
    if images.dim() == 2:
        return images.unflatten(1, (28, 28))
    return images
'''

ROW_CLASSIFIER_DICT = '''
class RowClassifier(nn.Module):
    """Reads an image one row per time step and classifies it."""

    def __init__(self, rnn="lstm", hidden_size=128, num_layers=2, bidirectional=True, dropout=0.0):
        super().__init__()
        layer = {"lstm": nn.LSTM, "gru": nn.GRU}[rnn]            # KeyError for anything else
        self.rnn = layer(input_size=28, hidden_size=hidden_size, num_layers=num_layers, batch_first=True,
                         bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), 10)

    def forward(self, x):
        state = self.rnn(x)[1]
        h = state[0] if self.rnn.mode == "LSTM" else state
        layers, directions = self.rnn.num_layers, 2 if self.rnn.bidirectional else 1
        top = h.view(layers, directions, x.shape[0], -1)[-1]      # (D, B, H)
        return self.head(top.transpose(0, 1).reshape(x.shape[0], -1))
'''

ROW_CLASSIFIER_IF = '''
class RowClassifier(nn.Module):
    """Reads an image one row per time step and classifies it."""

    def __init__(self, rnn="lstm", hidden_size=128, num_layers=2, bidirectional=True, dropout=0.0):
        super().__init__()
        assert rnn in ("lstm", "gru"), f"unknown rnn {rnn!r}"
        if num_layers == 1:
            dropout = 0.0
        if rnn == "lstm":
            self.rnn = nn.LSTM(28, hidden_size, num_layers, batch_first=True, dropout=dropout,
                               bidirectional=bidirectional)
        else:
            self.rnn = nn.GRU(28, hidden_size, num_layers, batch_first=True, dropout=dropout,
                              bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.head = nn.Linear(2 * hidden_size if bidirectional else hidden_size, 10)

    def forward(self, x):
        output, hidden = self.rnn(x)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        if self.bidirectional:
            features = torch.cat((hidden[-2], hidden[-1]), dim=-1)
        else:
            features = hidden[-1]
        return self.head(features)
'''

TRAIN_ITEM_PER_STEP = '''
def train_model(model, train_x, train_y, epochs, batch_size, lr, device, *, quiet=False,
                eval_data=None, seed=0, amp=None):
    """Train `model` in place: Adam, one-cycle schedule, cross-entropy."""
    device = torch.device(device)
    if amp is None:
        amp = device.type == "cuda"
    model = model.to(device)
    X = images_to_sequences(train_x).to(device)
    Y = train_y.to(device)
    N = X.shape[0]
    n_batches = (N + batch_size - 1) // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs, steps_per_epoch=n_batches)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    g = torch.Generator()
    g.manual_seed(seed)
    history = {"loss": [], "accuracy": [], "seconds": []}
    if eval_data is not None:
        history["test_accuracy"] = []
    total = 0.0
    with tqdm(total=epochs * n_batches, disable=quiet, file=sys.stdout) as bar:
        for ep in range(epochs):
            t0 = time.time()
            model.train()
            perm = torch.randperm(N, generator=g).to(device)
            sum_loss, n_correct = 0.0, 0
            for b in perm.split(batch_size):
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                    out = model(X[b])
                loss = nn.functional.cross_entropy(out.float(), Y[b])
                opt.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                sum_loss += loss.item() * len(b)
                n_correct += (out.argmax(dim=1) == Y[b]).sum().item()
                bar.update()
            total += time.time() - t0
            history["loss"].append(sum_loss / N)
            history["accuracy"].append(n_correct / N)
            history["seconds"].append(total)
            if eval_data is not None:
                history["test_accuracy"].append(evaluate(model, eval_data[0], eval_data[1], device))
    return history
'''

TRAIN_WHILE_LOOP = '''
def train_model(model, train_x, train_y, epochs, batch_size, lr, device, *, quiet=False,
                eval_data=None, seed=0, amp=None):
    """Train `model` in place (Adam + OneCycleLR, cross-entropy); per-epoch history."""
    dev = torch.device(device)
    use_amp = (dev.type == "cuda") if amp is None else amp
    seqs = train_x.reshape(len(train_x), 28, 28).to(dev)
    labels = train_y.to(dev)
    model.to(dev)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(seqs) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler(dev.type, enabled=use_amp and dev.type == "cuda")
    rng = torch.Generator().manual_seed(seed)
    hist = dict(loss=[], accuracy=[], seconds=[])
    if eval_data is not None:
        hist["test_accuracy"] = []
    elapsed = 0.0
    progress = tqdm(range(epochs * steps_per_epoch), disable=quiet, file=sys.stdout)
    for epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(seqs), generator=rng).to(dev)
        loss_total = torch.zeros((), device=dev)
        hits = torch.zeros((), device=dev)
        i = 0
        while i < len(seqs):
            idx = order[i:i + batch_size]
            i += batch_size
            with torch.autocast(dev.type, enabled=use_amp):
                logits = model(seqs[idx])
            loss = criterion(logits.float(), labels[idx])
            optimizer.zero_grad()
            if scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            loss_total += loss.detach() * len(idx)
            hits += (logits.argmax(-1) == labels[idx]).sum()
            progress.update(1)
        elapsed += time.perf_counter() - start
        hist["loss"].append(loss_total.item() / len(seqs))
        hist["accuracy"].append(hits.item() / len(seqs))
        hist["seconds"].append(elapsed)
        if eval_data is not None:
            hist["test_accuracy"].append(evaluate(model, *eval_data, dev))
    progress.close()
    return hist
'''

EVALUATE_CAT = '''
@torch.no_grad()
def evaluate(model, x, y, device, batch_size=4096):
    """Accuracy of `model` on x with labels y, in eval mode: a float in [0, 1]."""
    device = torch.device(device)
    model.eval()
    model.to(device)
    if x.dim() != 3:
        x = images_to_sequences(x)
    preds = [model(chunk.to(device)).argmax(dim=1).cpu() for chunk in torch.split(x, batch_size)]
    return (torch.cat(preds) == y.cpu()).double().mean().item()
'''

EVALUATE_INFERENCE_MODE = '''
def evaluate(model, x, y, device, batch_size=4096):
    """Accuracy of `model` on x with labels y, in eval mode: a float in [0, 1]."""
    was_training = model.training
    model.eval()
    seqs = x if x.ndim == 3 else x.reshape(x.shape[0], 28, 28)
    correct = 0
    with torch.inference_mode():
        for start in range(0, seqs.shape[0], batch_size):
            logits = model(seqs[start:start + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == y[start:start + batch_size].cpu()).sum())
    model.train(was_training)
    return correct / seqs.shape[0]
'''

ROWS_LOOP = '''
def accuracy_by_rows_read(model, x, y, device):
    """Accuracy when the model reads only the first k rows of each image, for k = 1, ..., 28."""
    seq = x.reshape(len(x), 28, 28)
    accs = []
    for k in range(1, 29):
        accs.append(float(evaluate(model, seq[:, :k, :], y, device)))
    return accs
'''

ROWS_NARROW = '''
def accuracy_by_rows_read(model, x, y, device):
    """Accuracy from the first k rows, k = 1 .. 28."""
    s = images_to_sequences(x)
    return [evaluate(model, s.narrow(1, 0, k).contiguous(), y, device) for k in range(1, 29)]
'''

ALTERNATIVES = {
    "load_mnist": [LOAD_MNIST_STD_MEAN, LOAD_MNIST_NUMPY],
    "images_to_sequences": [IMAGES_VIEW, IMAGES_BY_SHAPE],
    "RowClassifier": [ROW_CLASSIFIER_DICT, ROW_CLASSIFIER_IF],
    "train_model": [TRAIN_ITEM_PER_STEP, TRAIN_WHILE_LOOP],
    "evaluate": [EVALUATE_CAT, EVALUATE_INFERENCE_MODE],
    "accuracy_by_rows_read": [ROWS_LOOP, ROWS_NARROW],
}

WRONG = [
    # Statistics of each set for itself: the test set shifts.
    ("load_mnist", _fill("load_mnist", '''
def standardise(images):
    x = images.float().div(255).unsqueeze(1)
    return (x - x.mean()) / x.std()
return standardise(train.data), train.targets, standardise(test.data), test.targets
'''), "test_load_mnist", "TRAINING set's mean and std"),
    # Time runs over the columns.
    ("images_to_sequences", '''
def images_to_sequences(images):
    return images.reshape(len(images), 28, 28).transpose(1, 2)
''', "test_images_to_sequences", "column"),
    # The tutorial bug: out[:, -1] for a bidirectional network.
    ("RowClassifier", '''
class RowClassifier(nn.Module):
    def __init__(self, rnn="lstm", hidden_size=128, num_layers=2, bidirectional=True, dropout=0.0):
        super().__init__()
        kind = {"lstm": nn.LSTM, "gru": nn.GRU}[rnn]
        self.rnn = kind(28, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                        dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear((2 if bidirectional else 1) * hidden_size, 10)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])
''', "test_RowClassifier_forward", "out[:, -1]"),
    # dropout passed on with one layer (PyTorch warns and ignores it, the docstring says 0).
    ("RowClassifier", '''
class RowClassifier(nn.Module):
    def __init__(self, rnn="lstm", hidden_size=128, num_layers=2, bidirectional=True, dropout=0.0):
        super().__init__()
        kind = nn.GRU if rnn == "gru" else nn.LSTM if rnn == "lstm" else None
        if kind is None:
            raise ValueError(rnn)
        self.rnn = kind(28, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional, dropout=dropout)
        self.head = nn.Linear((2 if bidirectional else 1) * hidden_size, 10)

    def forward(self, x):
        h = self.rnn(x)[1]
        h = h[0] if isinstance(h, tuple) else h
        d = 2 if self.rnn.bidirectional else 1
        return self.head(torch.cat(list(h[-d:]), dim=1))
''', "test_RowClassifier_init", "dropout"),
    # An unknown rnn silently becomes an LSTM.
    ("RowClassifier", '''
class RowClassifier(nn.Module):
    def __init__(self, rnn="lstm", hidden_size=128, num_layers=2, bidirectional=True, dropout=0.0):
        super().__init__()
        kind = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = kind(28, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional,
                        dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear((2 if bidirectional else 1) * hidden_size, 10)

    def forward(self, x):
        h = self.rnn(x)[1]
        h = h[0] if isinstance(h, tuple) else h
        d = 2 if self.rnn.bidirectional else 1
        return self.head(torch.cat(list(h[-d:]), dim=1))
''', "test_RowClassifier_init", "must raise an exception"),
    # Training accuracy as a count of correct images, not a fraction.
    ("train_model", TRAIN_ITEM_PER_STEP.replace('history["accuracy"].append(n_correct / N)',
                                                'history["accuracy"].append(n_correct)'),
     "test_train_model_history", "fractions in [0, 1]"),
    # Dropout left on while measuring.
    ("evaluate", '''
@torch.no_grad()
def evaluate(model, x, y, device, batch_size=4096):
    seqs = x if x.dim() == 3 else images_to_sequences(x)
    pred = model.to(device)(seqs.to(device)).argmax(1)
    return (pred == y.to(device)).float().mean().item()
''', "test_evaluate", "eval mode"),
    # The last k rows instead of the first k.
    ("accuracy_by_rows_read", '''
def accuracy_by_rows_read(model, x, y, device):
    seqs = images_to_sequences(x)
    return [evaluate(model, seqs[:, -k:], y, device) for k in range(1, 29)]
''', "test_accuracy_by_rows_read", "LAST k rows"),
]
