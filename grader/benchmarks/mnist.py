"""MNIST row by row (notebook 07): how fast the notebook's own code trains.

Both benchmarks run the SOLUTION's code (grader.solution_code.load("07_mnist_row_by_row")), so they
measure what the notebook teaches: its RowClassifier, train_model (whole data set on the device,
large batches, one-cycle schedule; on CUDA float16 autocast with a GradScaler and a fused Adam)
and evaluate.

    mnist-cpu   FAST-style settings on the CPU: test accuracy on all 10,000 test images and the
                seconds of training (target: >= 98.5% within 30 s on 2 cores)
    mnist-gpu   the notebook's FULL recipe (RECIPES["FULL"] in its setup cell) on one CUDA GPU:
                seconds of training until the test accuracy on all 10,000 test images first
                reaches 99.0% (target <= 15 s, moonshot <= 5 s), measured at the end of each
                epoch with the GPU synchronised, the per-epoch evaluation not counted. After an
                untimed warm-up, the recipe runs twice with the same seeds: the second run
                repeats the timing and shows whether a rerun on this GPU gives the same curve.
                Skipped without CUDA.

mnist-gpu reports everything needed to judge the figure: the recipe, per-epoch loss, test
accuracy and seconds of both runs, the epoch that reached 99%, the throughput, the peak GPU
memory, the time spent loading data and warming up, and the device and library versions.
"""
import os
import time

from ..bench import Skip, benchmark

# A 1-layer unidirectional LSTM: the cheapest model that clears 98.5% on the full test set.
CPU_SETTINGS = dict(model=dict(rnn="lstm", hidden_size=128, num_layers=1, bidirectional=False),
                    epochs=3, batch_size=128, lr=1e-2)
RERUN_IF_UNDER = 90.0        # seconds: the second run only when the first was quick enough


def _solution():
    import contextlib
    import io

    from .. import paths, solution_code
    os.environ.setdefault("COURSE_DATA", str(paths.DATA))
    with contextlib.redirect_stdout(io.StringIO()):        # the setup cell prints its mode line
        ns = solution_code.load("07_mnist_row_by_row")
    data = ns["load_mnist"](paths.DATA)
    return ns, data


def full_recipe(ns=None):
    """The notebook's FULL recipe, from its setup cell (the one place it is written)."""
    if ns is None:
        ns = _solution()[0]
    return ns["RECIPES"]["FULL"]


def _run(ns, data, settings, device, seed=0):
    import torch
    train_x, train_y, test_x, test_y = data
    n_train = settings.get("train_size", len(train_x))
    n_test = settings.get("test_size", len(test_x))
    torch.manual_seed(seed)
    model = ns["RowClassifier"](**settings["model"])
    history = ns["train_model"](model, train_x[:n_train], train_y[:n_train], settings["epochs"],
                                settings["batch_size"], settings["lr"], device, quiet=True, seed=seed,
                                eval_data=(test_x[:n_test], test_y[:n_test]))
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


def _rerun_words(first, second):
    """One clause for the notebook: did a second run with the same seeds repeat the first?"""
    if first["loss"] == second["loss"] and first["test_accuracy"] == second["test_accuracy"]:
        return "the two runs gave the same curve, number for number"
    differs = [i for i, (a, b) in enumerate(zip(first["loss"], second["loss"])) if a != b]
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(first["loss"], second["loss"]))
    a1, a2 = first["test_accuracy"][-1], second["test_accuracy"][-1]
    return (f"the two runs' training losses differed from epoch {differs[0] + 1 if differs else '?'} on "
            f"(by up to {rel:.1e}, relatively) and their final test accuracies were {a1:.2%} and {a2:.2%}")


def measure(ns, data, recipe, device, *, reruns=True, warmup_images=4096):
    """Train `recipe` on `device` (warm-up, run, and a same-seed rerun when the first run took
    under RERUN_IF_UNDER seconds); the figures mnist-gpu reports. Works on any device, so it can
    be tested on a CPU with a small recipe."""
    import torch
    device = torch.device(device)
    target = recipe.get("target", 0.99)
    cuda = device.type == "cuda"
    start = time.perf_counter()
    warm = dict(recipe, epochs=1, train_size=min(warmup_images, recipe.get("train_size", warmup_images)),
                test_size=min(1000, recipe.get("test_size", 1000)))
    _run(ns, data, warm, device)
    warmup_seconds = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    runs = [_run(ns, data, recipe, device)]
    if reruns and runs[0]["seconds"][-1] < RERUN_IF_UNDER:
        runs.append(_run(ns, data, recipe, device))

    def reached(history):
        return next(((i + 1, t) for i, (t, a) in enumerate(zip(history["seconds"], history["test_accuracy"]))
                     if a >= target), (None, None))

    first = runs[0]
    epoch, seconds = reached(first)
    n_train = min(recipe.get("train_size", len(data[0])), len(data[0]))
    figures = {
        "seconds": round(seconds, 2) if seconds is not None else float("nan"),
        "reached_99": seconds is not None,
        "epoch_reached_99": epoch,
        "accuracy": round(first["test_accuracy"][-1], 4),
        "seconds_all_epochs": round(first["seconds"][-1], 2),
        "epochs": recipe["epochs"],
        "target": target,
        "test_images": min(recipe.get("test_size", len(data[2])), len(data[2])),
        "train_images": n_train,
        "images_per_second": round(recipe["epochs"] * n_train / first["seconds"][-1]),
        "test_accuracy_by_epoch": [round(a, 4) for a in first["test_accuracy"]],
        "seconds_by_epoch": [round(t, 3) for t in first["seconds"]],
        "loss_by_epoch": [round(v, 5) for v in first["loss"]],
        "recipe": recipe,
        "amp": "float16 autocast + GradScaler, fused Adam" if cuda else "float32",
        "warmup_seconds": round(warmup_seconds, 2),
    }
    if len(runs) > 1:
        second = runs[1]
        epoch2, seconds2 = reached(second)
        figures.update(
            rerun_seconds=round(seconds2, 2) if seconds2 is not None else float("nan"),
            rerun_epoch_reached_99=epoch2,
            rerun_accuracy=round(second["test_accuracy"][-1], 4),
            rerun_seconds_all_epochs=round(second["seconds"][-1], 2),
            rerun_test_accuracy_by_epoch=[round(a, 4) for a in second["test_accuracy"]],
            rerun_identical=first["loss"] == second["loss"] and first["test_accuracy"] == second["test_accuracy"],
            rerun=_rerun_words(first, second))
    else:
        figures["rerun"] = None
    if cuda:
        figures.update(gpu=torch.cuda.get_device_name(device),
                       peak_memory_mb=round(torch.cuda.max_memory_allocated(device) / 2 ** 20),
                       cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    figures["torch"] = torch.__version__
    return figures


@benchmark("mnist-gpu")
def mnist_gpu(recipe=None):
    import torch
    if not torch.cuda.is_available():
        raise Skip("no CUDA GPU")
    start = time.perf_counter()
    ns, data = _solution()
    load_seconds = time.perf_counter() - start
    figures = measure(ns, data, recipe or full_recipe(ns), torch.device("cuda"))
    figures["load_seconds"] = round(load_seconds, 2)
    return figures
