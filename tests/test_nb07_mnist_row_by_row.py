"""Notebook 07 (MNIST row by row): the reference code against PyTorch, the data loading paths
(offline from data/, decompression, the one-sentence error), the grade cells against wrong
answers, the stand-ins that keep an unsolved notebook running, the claims about seeds, and the
benchmarks' reporting (run on a CPU with a tiny recipe: the GPU itself is not needed)."""
import contextlib
import io
import json
import math
import os
import shutil
import sys
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
        return solution_code.load(NAME, extra_tags=("test-helpers",))


@pytest.fixture(scope="module")
def mnist(ns):
    return ns["load_mnist"](paths.DATA)


def cell_source(grade_id):
    nb = nbformat.read(paths.solution_path(NAME), as_version=4)
    return next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def run_cell(grade_id, env):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(cell_source(grade_id), f"<{grade_id}>", "exec"), env)
    return out.getvalue()


def failure(grade_id, env):
    """The AssertionError message a grade cell gives in `env`."""
    with pytest.raises(AssertionError) as info, contextlib.redirect_stdout(io.StringIO()):
        exec(compile(cell_source(grade_id), f"<{grade_id}>", "exec"), env)
    return str(info.value)


# ---------------------------------------------------------------- data

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


def test_trusted_reader_agrees_with_torchvision(ns):
    """The test-helpers cell reads the idx files itself; it must agree with torchvision."""
    for split, train in (("train", True), ("test", False)):
        images, labels = ns["_mnist_raw"](split)
        tv = torchvision.datasets.MNIST(paths.DATA, train=train)
        assert torch.equal(images, tv.data) and torch.equal(labels, tv.targets)
    mean, std = ns["_mnist_train_stats"]()
    x = ns["_mnist_raw"]("train")[0].double() / 255
    assert abs(mean - x.mean().item()) < 1e-12 and abs(std - x.std().item()) < 1e-9


def test_trusted_reader_reads_gz_only(ns, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in (paths.DATA / "MNIST" / "raw").glob("t10k-*.gz"):
        shutil.copy(gz, raw / gz.name)
    env = dict(ns, DATA_ROOT=tmp_path, _MNIST_CACHE={})
    exec("_got = _mnist_raw('test')", env)
    assert torch.equal(env["_got"][1], ns["_mnist_raw"]("test")[1])


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


# ---------------------------------------------------------------- reference code

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


def test_fixed_seeds_repeat_a_cpu_run_exactly(ns, mnist):
    """Section 4's claim: on a CPU, the same seeds give the same curve, number for number."""
    train_x, train_y, test_x, test_y = mnist
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ns["RowClassifier"]("lstm", hidden_size=16, num_layers=2, bidirectional=True, dropout=0.2)
        history = ns["train_model"](model, train_x[:600], train_y[:600], 2, 64, 1e-2, "cpu", quiet=True,
                                    eval_data=(test_x[:200], test_y[:200]))
        runs.append((history["loss"], history["accuracy"], history["test_accuracy"],
                     [p.detach().clone() for p in model.parameters()]))
    assert runs[0][:3] == runs[1][:3]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][3], runs[1][3]))


def test_recipes_live_in_the_setup_cell(ns):
    full, fast = ns["RECIPES"]["FULL"], ns["RECIPES"]["FAST"]
    assert full["target"] == 0.99 and full["test_size"] == 10000 and full["train_size"] == 60000
    assert full["model"] == dict(rnn="lstm", hidden_size=128, num_layers=2, bidirectional=True, dropout=0.2)
    assert fast["target"] == 0.95
    from grader.benchmarks import mnist as mnist_bench
    assert mnist_bench.full_recipe(ns) is full


# ---------------------------------------------------------------- grade cells against wrong answers

def test_every_grade_cell_passes_on_the_reference(ns, mnist):
    env = dict(ns)
    for grade_id in ("test_load_mnist", "test_images_to_sequences", "test_RowClassifier_init",
                     "test_RowClassifier_forward", "test_train_model", "test_train_model_history",
                     "test_evaluate", "test_accuracy_by_rows_read"):
        out = run_cell(grade_id, env)
        assert out.count("\n") == 1 and "(visible tests)" in out, (grade_id, out)


def test_grade_cell_catches_out_last_step(ns):
    """A RowClassifier reading out[:, -1] (yunjey/pytorch-tutorial#149) fails the visible test."""
    class Buggy(ns["RowClassifier"]):
        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    assert "out[:, -1]" in failure("test_RowClassifier_forward", dict(ns, RowClassifier=Buggy))


def test_grade_cell_catches_column_order(ns):
    env = dict(ns, images_to_sequences=lambda images: images.reshape(len(images), 28, 28).transpose(1, 2))
    assert "column" in failure("test_images_to_sequences", env)


def test_unknown_rnn_may_raise_any_exception(ns):
    """The docstring allows any exception (ValueError, a dict lookup's KeyError, ...)."""
    base = ns["RowClassifier"]

    class DictLookup(base):
        def __init__(self, rnn="lstm", *args, **kwargs):
            {"lstm": 1, "gru": 2}[rnn]                        # KeyError for anything else
            super().__init__(rnn, *args, **kwargs)

    class Silent(base):
        def __init__(self, rnn="lstm", *args, **kwargs):
            super().__init__(rnn if rnn in ("lstm", "gru") else "lstm", *args, **kwargs)

    run_cell("test_RowClassifier_init", dict(ns, RowClassifier=DictLookup))
    assert "must raise" in failure("test_RowClassifier_init", dict(ns, RowClassifier=Silent))


def test_grade_cell_catches_dropout_with_one_layer(ns):
    base = ns["RowClassifier"]

    class AlwaysDropout(base):
        def __init__(self, rnn="lstm", hidden_size=128, num_layers=2, bidirectional=True, dropout=0.0):
            nn.Module.__init__(self)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.rnn = (nn.GRU if rnn == "gru" else nn.LSTM)(28, hidden_size, num_layers, batch_first=True,
                                                                 bidirectional=bidirectional, dropout=dropout)
            self.head = nn.Linear((2 if bidirectional else 1) * hidden_size, 10)
            self.num_directions = 2 if bidirectional else 1
    assert "dropout" in failure("test_RowClassifier_init", dict(ns, RowClassifier=AlwaysDropout))


def test_grade_cell_catches_evaluate_in_train_mode(ns):
    def train_mode_evaluate(model, x, y, device, batch_size=4096):
        seqs = x if x.dim() == 3 else x.reshape(len(x), 28, 28)
        with torch.no_grad():
            return (model(seqs).argmax(1) == y).float().mean().item()
    assert "eval mode" in failure("test_evaluate", dict(ns, evaluate=train_mode_evaluate))


def test_grade_cell_catches_test_accuracy_measured_in_train_mode(ns):
    base = ns["train_model"]

    def wrong_history(*args, **kwargs):
        eval_data = kwargs.pop("eval_data", None)
        history = base(*args, **kwargs)
        if eval_data is not None:
            history["test_accuracy"] = [0.5] * len(history["loss"])
        return history
    assert "test_accuracy" in failure("test_train_model_history", dict(ns, train_model=wrong_history))


def test_grade_cell_catches_normalising_test_with_its_own_statistics(ns, mnist):
    train_x, train_y, test_x, test_y = mnist
    raw = ns["_mnist_raw"]("test")[0].float().div(255).unsqueeze(1)
    own = (raw - raw.mean()) / raw.std()
    env = dict(ns, load_mnist=lambda root=None: (train_x, train_y, own, test_y))
    assert "TRAINING" in failure("test_load_mnist", env)


def test_grade_cell_catches_last_rows(ns):
    def last_rows(model, x, y, device):
        seqs = x.reshape(len(x), 28, 28)
        return [ns["evaluate"](model, seqs[:, -k:], y, device) for k in range(1, 29)]
    assert "LAST k rows" in failure("test_accuracy_by_rows_read", dict(ns, accuracy_by_rows_read=last_rows))


# ---------------------------------------------------------------- the trained model and the stand-ins

def _stand_ins(ns, **unwritten):
    """The stand-ins cell run with the given exercises replaced by NotImplementedError stubs."""
    def stub(*args, **kwargs):
        raise NotImplementedError()

    class StubClassifier(ns["RowClassifier"]):
        def __init__(self, *args, **kwargs):
            raise NotImplementedError()

    env = dict(ns, GRADING=True)
    for name in unwritten:
        env[name] = StubClassifier if name == "RowClassifier" else stub
    run_cell("stand-ins", env)
    return env


def test_stand_ins_keep_the_demonstrations_running(ns, mnist):
    env = _stand_ins(ns, load_mnist=1, images_to_sequences=1, RowClassifier=1, train_model=1, evaluate=1,
                     accuracy_by_rows_read=1)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec("_data = load_data()", env)
        train_x, train_y, test_x, test_y = env["_data"]
        model = env["build_classifier"](rnn="lstm", hidden_size=16, num_layers=2, bidirectional=True)
        history = env["fit"](model, train_x[:3000], train_y[:3000], 3, 128, 1e-2, "cpu",
                             eval_data=(test_x[:300], test_y[:300]))
        rows = env["rows_accuracy"](model, test_x[:100], test_y[:100], "cpu")
        env["fit"](env["build_classifier"](rnn="gru", hidden_size=8), train_x[:100], train_y[:100], 1, 32, 1e-2, "cpu")
    lines = out.getvalue().strip().splitlines()
    for name in ("load_mnist", "RowClassifier", "train_model", "evaluate", "accuracy_by_rows_read",
                 "images_to_sequences"):
        said = [line for line in lines if line.startswith(f"{name} is not written yet")]
        assert len(said) == 1, (name, lines)                  # one line, once
    assert len(lines) == 6, lines
    assert train_x.shape == (60000, 1, 28, 28) and test_y.shape == (10000,)
    assert set(history) == {"loss", "accuracy", "seconds", "test_accuracy"} and len(rows) == 28
    assert getattr(model, "trained_by", None) == "stand-in"


def test_trained_model_cell_refuses_stand_ins(ns, mnist):
    env = _stand_ins(ns, RowClassifier=1)
    env["model"] = env["StandInClassifier"]()
    env.update(SETTINGS=dict(ns["RECIPES"]["FAST"]), MODE="FAST")
    assert "not a RowClassifier" in failure("test_trained_model", env)
    model = ns["RowClassifier"](hidden_size=8, num_layers=1)
    model.trained_by = "stand-in"
    env = dict(ns, model=model, SETTINGS=dict(ns["RECIPES"]["FAST"]), MODE="FAST")
    assert "stand-in" in failure("test_trained_model", env)


def test_trained_model_cell_uses_trusted_data_and_settings(ns, mnist):
    """It reads SETTINGS/MODE from the setup cell and the test images through the test helpers:
    a notebook whose own test_x was changed cannot pass an untrained model."""
    train_x, train_y, test_x, test_y = mnist
    torch.manual_seed(0)
    model = ns["RowClassifier"](hidden_size=8, num_layers=1)
    env = dict(ns, model=model, test_x=torch.zeros(10, 1, 28, 28), test_y=torch.zeros(10, dtype=torch.long))
    message = failure("test_trained_model", env)
    assert "the target is 0.95" in message and "first 2000 test images" in message
    source = cell_source("test_trained_model")
    for name in ("test_x", "test_y", "history", "n_test"):
        assert name not in source.replace("_test", ""), f"test_trained_model reads {name}"


def test_trained_model_cell_passes_a_trained_model(ns, mnist):
    train_x, train_y, test_x, test_y = mnist
    torch.manual_seed(0)
    model = ns["RowClassifier"]("lstm", hidden_size=48, num_layers=1, bidirectional=False)
    ns["train_model"](model, train_x[:6000], train_y[:6000], 2, 128, 1e-2, "cpu", quiet=True)
    env = dict(ns, model=model, SETTINGS=dict(ns["RECIPES"]["FAST"], target=0.75), MODE="FAST")
    out = run_cell("test_trained_model", env)
    assert out.startswith("trained model: ") and out.count("\n") == 1


# ---------------------------------------------------------------- benchmarks

def test_benchmarks_registered():
    registry = bench.discover()
    assert {"mnist-cpu", "mnist-gpu"} <= set(registry)
    if not torch.cuda.is_available():
        with pytest.raises(bench.Skip):
            registry["mnist-gpu"]()


def test_gpu_measurement_reports_everything_on_a_cpu(ns, mnist):
    """mnist-gpu's measuring code, run on a CPU with a tiny recipe: every figure is there, the
    rerun comparison says whether the runs matched (on a CPU they do)."""
    from grader.benchmarks import mnist as mnist_bench
    recipe = dict(model=dict(rnn="gru", hidden_size=8, num_layers=1, bidirectional=False),
                  train_size=512, test_size=256, epochs=2, batch_size=128, lr=1e-2, target=0.2)
    figures = mnist_bench.measure(ns, mnist, recipe, "cpu", warmup_images=256)
    for key in ("seconds", "reached_99", "epoch_reached_99", "accuracy", "seconds_all_epochs", "epochs",
                "test_accuracy_by_epoch", "seconds_by_epoch", "loss_by_epoch", "images_per_second", "recipe",
                "rerun_seconds", "rerun_accuracy", "rerun_identical", "rerun", "warmup_seconds", "torch"):
        assert key in figures, key
    assert figures["rerun_identical"] is True and figures["rerun"] == "the two runs gave the same curve, number for number"
    assert figures["reached_99"] == (figures["epoch_reached_99"] is not None)
    json.dumps(figures)
    words = mnist_bench._rerun_words({"loss": [1.0, 0.5], "test_accuracy": [0.9, 0.99]},
                                     {"loss": [1.0, 0.5001], "test_accuracy": [0.9, 0.9893]})
    assert "from epoch 2 on" in words and "99.00% and 98.93%" in words


# ---------------------------------------------------------------- the untouched student copy

@pytest.mark.slow
def test_untouched_student_copy_errors_only_in_grade_cells(tmp_path):
    """Executed as nbgrader would (small settings), the student copy runs every demonstration on
    stand-ins, printing one line per unwritten exercise, and fails only in grade cells."""
    import subprocess
    env = dict(os.environ, NBGRADER_EXECUTION="autograde", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(paths.ROOT))
    proc = subprocess.run([sys.executable, "-m", "grader.gpu_check", "execute", str(paths.student_path(NAME)),
                           str(tmp_path / "out.ipynb"), "--summary", str(tmp_path / "summary.json")],
                          cwd=paths.NOTEBOOKS, env=env, capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    for cell in nb.cells:
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        if errors:
            assert cell.metadata.get("nbgrader", {}).get("grade"), (cell.source[:200], errors[0].evalue)
    said = [line for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout"
            for line in o.text.splitlines() if "is not written yet" in line]
    assert len(said) == 6 and len(set(said)) == 6, said
    assert summary["figures"] >= 5
