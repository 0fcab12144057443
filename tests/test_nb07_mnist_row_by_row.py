"""Reference code of notebook 06 (MNIST row by row), checked against PyTorch, plus the data
loading paths (offline from data/, decompression, the one-sentence error) and the benchmarks."""
import contextlib
import io
import os
import shutil
import warnings

import nbformat
import pytest
import torch
import torch.nn as nn
import torchvision

from grader import bench, paths, solution_code

NAME = "07_mnist_row_by_row"


@pytest.fixture(scope="module")
def ns():
    os.environ.setdefault("COURSE_DATA", str(paths.DATA))
    with contextlib.redirect_stdout(io.StringIO()):
        return solution_code.load("07_mnist_row_by_row")


@pytest.fixture(scope="module")
def mnist(ns):
    return ns["load_mnist"](paths.DATA)


def grade_cell(grade_id):
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    return next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def test_load_mnist_from_data(ns, mnist):
    train_x, train_y, test_x, test_y = mnist
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert abs(train_x.mean().item()) < 1e-4 and abs(train_x.std().item() - 1) < 1e-4
    raw = torchvision.datasets.MNIST(paths.DATA, train=False)          # decompressed by load_mnist
    lo, scale = train_x.min(), train_x.max() - train_x.min()
    want = (raw.data.float() / 255).unsqueeze(1) * scale + lo            # same map as the train set
    assert torch.allclose(test_x, want, atol=1e-5), "test set must use the training mean/std"
    assert torch.equal(test_y, raw.targets)


def test_load_mnist_decompresses_gz_only_copy(ns, mnist, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (paths.DATA / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(gz, raw / gz.name)
    got = ns["load_mnist"](tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(got, mnist))
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == sorted(ns["MNIST_FILES"]), \
        "decompression left temporary files behind"


def test_missing_data_gives_one_clear_sentence(ns, tmp_path, monkeypatch):
    # No files and no network: every mirror refuses the connection at once.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(RuntimeError) as info:
        ns["load_mnist"](tmp_path / "nowhere")
    message = str(info.value)
    assert message.startswith(f"MNIST is not in {tmp_path / 'nowhere'} and could not be downloaded (")
    assert message.endswith("or connect to the internet.") and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__, "the torchvision traceback must be hidden"


def test_images_to_sequences_row_order(ns):
    f = ns["images_to_sequences"]
    img = torch.randn(4, 1, 28, 28)
    for x in (img, img.reshape(4, 784), img.reshape(4, 28, 28)):
        seq = f(x)
        assert seq.shape == (4, 28, 28)
        for t in range(28):
            assert torch.equal(seq[:, t], img[:, 0, t])


@pytest.mark.parametrize("kind,H,L,bi", [("lstm", 128, 2, True), ("gru", 16, 3, True), ("lstm", 8, 1, False),
                                         ("gru", 12, 2, False), ("lstm", 5, 3, True)])
def test_row_classifier_uses_top_layer_h_n(ns, kind, H, L, bi):
    torch.manual_seed(0)
    model = ns["RowClassifier"](kind, hidden_size=H, num_layers=L, bidirectional=bi).eval()
    ref = (nn.LSTM if kind == "lstm" else nn.GRU)(28, H, L, batch_first=True, bidirectional=bi)
    ref.load_state_dict(model.rnn.state_dict())            # a separate torch module, same weights
    D = 2 if bi else 1
    for T in (28, 6):
        x = torch.randn(3, T, 28)
        with torch.no_grad():
            _, state = ref(x)
            h_n = state[0] if kind == "lstm" else state
            top = h_n.view(L, D, 3, H)[-1]
            want = model.head(torch.cat(list(top), dim=1))
            assert torch.allclose(model(x), want, atol=1e-6)


def test_backward_final_state_reaches_logits(ns):
    torch.manual_seed(0)
    model = ns["RowClassifier"]("lstm", hidden_size=32, num_layers=2, bidirectional=True).eval()
    with torch.no_grad():
        model.head.weight[:, :32] = 0                       # only the backward half is read
        x = torch.randn(4, 28, 28)
        x2 = x.clone()
        x2[:, 0] += 1                                       # change only the first row
        assert not torch.allclose(model(x), model(x2))


def test_grade_cell_catches_out_last_step(ns):
    """A RowClassifier reading out[:, -1] (yunjey/pytorch-tutorial#149) fails the visible test."""
    class Buggy(ns["RowClassifier"]):
        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    env = dict(ns, RowClassifier=Buggy)
    with pytest.raises(AssertionError, match=r"out\[:, -1\]"):
        exec(grade_cell("test_RowClassifier"), env)
    exec(grade_cell("test_RowClassifier"), dict(ns))        # the reference passes, hidden tests too


def test_grade_cell_catches_column_order(ns):
    env = dict(ns, images_to_sequences=lambda images: images.reshape(len(images), 28, 28).transpose(1, 2))
    with pytest.raises(AssertionError, match="column"):
        exec(grade_cell("test_images_to_sequences"), env)


def test_training_improves_and_evaluation_agrees(ns, mnist):
    train_x, train_y, test_x, test_y = mnist
    torch.manual_seed(0)
    model = ns["RowClassifier"]("gru", hidden_size=32, num_layers=1, bidirectional=False)
    before = ns["evaluate"](model, test_x[:500], test_y[:500], "cpu")
    with contextlib.redirect_stderr(io.StringIO()) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = ns["train_model"](model, train_x[:2000], train_y[:2000], 2, 64, 1e-2, "cpu", quiet=True,
                                    eval_data=(test_x[:500], test_y[:500]))
    assert err.getvalue() == "", "quiet training must write nothing to stderr"
    assert len(history["loss"]) == 2 and history["loss"][1] < history["loss"][0]
    after = ns["evaluate"](model, test_x[:500], test_y[:500], "cpu")
    assert after > before + 0.3 and history["test_accuracy"][-1] == after
    with torch.no_grad():
        want = (model.eval()(test_x[:500, 0]).argmax(1) == test_y[:500]).float().mean().item()
    assert abs(after - want) < 1e-6
    rows = ns["accuracy_by_rows_read"](model, test_x[:300], test_y[:300], "cpu")
    with torch.no_grad():
        truth = [(model(test_x[:300, 0, :k]).argmax(1) == test_y[:300]).float().mean().item() for k in range(1, 29)]
    assert len(rows) == 28 and max(abs(a - b) for a, b in zip(rows, truth)) < 1e-6


def test_benchmarks_registered():
    registry = bench.discover()
    assert {"mnist-cpu", "mnist-gpu"} <= set(registry)
    if not torch.cuda.is_available():
        with pytest.raises(bench.Skip):
            registry["mnist-gpu"]()
