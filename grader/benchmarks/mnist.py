"""MNIST row by row (notebook 06): how fast the notebook's own code trains.

Both benchmarks run the SOLUTION's code (grader.solution_code.load("07_mnist_row_by_row")), so they measure what
the notebook teaches: its RowClassifier, train_model (whole data set on the device, large batches,
one-cycle schedule, bfloat16 autocast on CUDA) and evaluate.

    mnist-cpu   FAST-style settings on the CPU: test accuracy on all 10,000 test images and the
                seconds of training (target: >= 98.5% within 30 s on 2 cores)
    mnist-gpu   FULL settings on one CUDA GPU: seconds of training until the test accuracy first
                reaches 99.0% (evaluation time excluded, GPU synchronised) and the final accuracy
                (target: <= 15 s); skipped without CUDA
"""
import os

from ..bench import Skip, benchmark

# A 1-layer unidirectional LSTM: the cheapest model that clears 98.5% on the full test set.
CPU_SETTINGS = dict(model=dict(rnn="lstm", hidden_size=128, num_layers=1, bidirectional=False),
                    epochs=3, batch_size=128, lr=1e-2)
# The notebook's FULL model: 2-layer bidirectional LSTM, hidden size 128.
GPU_SETTINGS = dict(model=dict(rnn="lstm", hidden_size=128, num_layers=2, bidirectional=True),
                    epochs=8, batch_size=512, lr=8e-3)
TARGET_GPU = 0.99


def _solution():
    from .. import paths, solution_code
    os.environ.setdefault("COURSE_DATA", str(paths.DATA))
    ns = solution_code.load("07_mnist_row_by_row")
    data = ns["load_mnist"](paths.DATA)
    return ns, data


def _run(ns, data, settings, device, seed=0):
    import torch
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    model = ns["RowClassifier"](**settings["model"])
    history = ns["train_model"](model, train_x, train_y, settings["epochs"], settings["batch_size"],
                                settings["lr"], device, quiet=True, seed=seed,
                                eval_data=(test_x, test_y))
    return history


@benchmark("mnist-cpu")
def mnist_cpu(settings=None):
    import torch
    ns, data = _solution()
    s = settings or CPU_SETTINGS
    history = _run(ns, data, s, torch.device("cpu"))
    return {"accuracy": round(history["test_accuracy"][-1], 4),
            "seconds": round(history["seconds"][-1], 2),
            "epochs": s["epochs"], "threads": torch.get_num_threads(),
            "test_accuracy_by_epoch": [round(a, 4) for a in history["test_accuracy"]],
            "seconds_by_epoch": [round(t, 2) for t in history["seconds"]]}


@benchmark("mnist-gpu")
def mnist_gpu(settings=None):
    import torch
    if not torch.cuda.is_available():
        raise Skip("no CUDA GPU")
    ns, data = _solution()
    s = settings or GPU_SETTINGS
    device = torch.device("cuda")
    # Warm-up (cuDNN autotuning, CUDA context, allocator): one short untimed run on a slice.
    warm = dict(s, epochs=1)
    _run(ns, tuple(t[:4096] for t in data), warm, device)
    history = _run(ns, data, s, device)
    reached = next((t for t, a in zip(history["seconds"], history["test_accuracy"]) if a >= TARGET_GPU), None)
    return {"seconds": round(reached, 2) if reached is not None else float("nan"),
            "accuracy": round(history["test_accuracy"][-1], 4),
            "reached_99": reached is not None,
            "seconds_all_epochs": round(history["seconds"][-1], 2), "epochs": s["epochs"],
            "test_accuracy_by_epoch": [round(a, 4) for a in history["test_accuracy"]],
            "seconds_by_epoch": [round(t, 2) for t in history["seconds"]],
            "gpu": torch.cuda.get_device_name(0)}
