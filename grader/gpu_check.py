"""python3 -m grader gpu-check --out OUT: the course's GPU check, one command, under 8 minutes.

On a machine with one CUDA GPU, from the repository root:

    python3 -m grader gpu-check --out OUT             # the check (at most 460 s; see --budget)
    python3 -m grader.gpu_check --out OUT             # the same, without grader's command table
    python3 -m grader gpu-check --dry-run --out OUT   # any machine, CPU only: the whole pipeline, small
                                                      # (30 s on 2 idle CPU cores, 2026-12-02)

It runs, each step in its own process, under one overall time limit (--budget, default 460 s):

 1. solutions/07_mnist_row_by_row.ipynb executed headless, in order, in FULL mode (a GPU and no
    NBGRADER_EXECUTION): trains the full model, runs every grade cell including the hidden tests
    (the trained model must reach 99.0% on the test set)        -> OUT/07_mnist_row_by_row.ipynb
 2. `python -m grader bench --only mnist-gpu --json OUT/bench-mnist-gpu.json`, then the same for
    handlstm-gpu, each with its own time limit (bench writes its JSON at the end: one benchmark
    cut short must not lose the other's figures); run through grader.bench's own argument parser,
    the same code and JSON as the command line               -> OUT/bench-*.json, OUT/bench.json (both)
 3. solutions/06_hand_written_bilstm.ipynb executed headless: its speed section times nn.LSTM
    and the hand-written LSTMs on the GPU and draws the timing figure -> OUT/06_hand_written_bilstm.ipynb
 4. OUT/gpu.json: device, torch/CUDA/cuDNN versions, date, the benchmark figures, each notebook's
    outcome and notebook 07's training figures (format: measurements/README.md), and a verdict
    against the targets; OUT/gpu-check.log: everything every step printed.

Copy OUT/gpu.json to measurements/gpu.json and run `python -m grader release` to stamp the
figures into the notebooks (measurements/README.md). Exit status: 0 when every step ran without
an error or a timeout, 1 otherwise, 2 when there is no CUDA GPU (and no --dry-run).

Only the standard library, torch, torchvision, matplotlib, numpy and tqdm are needed (what the
GPU machine has): the notebooks run in a small exec-based runner, not Jupyter. It runs the code
cells in order in one namespace with the notebook's folder as working directory, captures
stdout, stderr, the value of a cell's last expression and every matplotlib figure (plt.show() or
left open), keeps going after an error (as `jupyter nbconvert --allow-errors` would), and writes
an .ipynb with the outputs after every cell, so a step cut by its time limit leaves what it ran.
Plain Python cells only (no %magics), as the course's notebooks are.

--dry-run forces the CPU (CUDA_VISIBLE_DEVICES="") and sets NBGRADER_EXECUTION, so each notebook
runs the small settings it uses under nbgrader; the GPU benchmarks then report "skipped". Its
gpu.json says "dry_run": true and the release step never stamps from it. It exists to test this
pipeline without a GPU (tests/test_gpu_check.py).
"""
import argparse
import ast
import base64
import io
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

try:                                  # grader.paths imports tomllib (Python >= 3.11); a GPU machine's
    import tomllib                    # noqa: F401   python may be older, and the check never reads
except ModuleNotFoundError:           # course.toml: an empty stand-in lets grader.paths import
    import types
    sys.modules["tomllib"] = types.ModuleType("tomllib")

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
BUDGET = 460           # seconds for the whole check: within 8 minutes with room for start-up
# (name, what, seconds at most for this step)
NOTEBOOK_07 = "07_mnist_row_by_row"
NOTEBOOK_06 = "06_hand_written_bilstm"
BENCHMARKS = ("mnist-gpu", "handlstm-gpu")
LIMITS = {NOTEBOOK_07: 150, "mnist-gpu": 120, "handlstm-gpu": 220, NOTEBOOK_06: 180}
TARGETS = {
    "mnist-gpu: seconds of training to 99.0% test accuracy": ("bench", "mnist-gpu", "seconds", "<=", 15.0),
    "mnist-gpu: moonshot": ("bench", "mnist-gpu", "seconds", "<=", 5.0),
    "handlstm-gpu: FastHandLSTM / nn.LSTM, forward+backward": ("bench", "handlstm-gpu", "ratio", "<=", 3.0),
    "handlstm-gpu: moonshot": ("bench", "handlstm-gpu", "ratio", "<=", 1.5),
    "notebook 07 FULL mode: test accuracy": ("notebooks", NOTEBOOK_07, "test_accuracy", ">=", 0.99),
    "whole check: seconds": ("top", None, "seconds", "<=", 480.0),
}


# ---------------------------------------------------------------- the notebook runner (child)

def _cells(path):
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    for cell in nb["cells"]:
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    return nb


def _clean_stream(text):
    """What a terminal shows: each line keeps what follows its last carriage return (tqdm)."""
    lines = text.split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                     for line in lines)


class _Tee(io.TextIOBase):
    """A stream that records into the current cell's outputs and echoes to the real stream."""

    def __init__(self, name, outputs, echo):
        self.name, self.outputs, self.echo = name, outputs, echo

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, text):
        if not text:
            return 0
        outs = self.outputs[0]
        if outs and outs[-1]["output_type"] == "stream" and outs[-1]["name"] == self.name:
            outs[-1]["text"] += text
        else:
            outs.append({"output_type": "stream", "name": self.name, "text": text})
        self.echo.write(text)
        self.echo.flush()
        return len(text)

    def flush(self):
        self.echo.flush()


def _figure_output(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=72)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                     "text/plain": f"<Figure size {fig.get_figwidth() * 72:.0f}x{fig.get_figheight() * 72:.0f}>"}}


def execute_notebook(src, dst, summary_path=None):
    """Run the code cells of `src` in order in one namespace; write `dst` (an .ipynb with the
    outputs) after every cell and, when asked, a JSON summary. Returns the summary."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nb = _cells(src)
    current = [[]]                                   # the outputs of the cell being run
    shown = []

    def show(*args, **kwargs):
        for num in plt.get_fignums():
            current[0].append(_figure_output(plt.figure(num)))
            shown.append(num)
        plt.close("all")

    def display(*objs, **kwargs):
        for obj in objs:
            if hasattr(obj, "savefig"):
                current[0].append(_figure_output(obj))
                plt.close(obj)
            else:
                current[0].append({"output_type": "display_data", "metadata": {},
                                   "data": {"text/plain": repr(obj)}})

    plt.show = show
    ns = {"__name__": "__main__", "display": display}
    real_out, real_err = sys.stdout, sys.stderr
    summary = {"ok": True, "seconds": 0.0, "errors": [], "figures": 0, "cells": 0, "cell_seconds": []}
    start = time.perf_counter()
    count = 0
    Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        count += 1
        outputs = []
        current[0] = outputs
        cell_start = time.perf_counter()
        sys.stdout, sys.stderr = _Tee("stdout", current, real_out), _Tee("stderr", current, real_err)
        real_out.write(f"\n[gpu-check] {Path(src).stem} cell {index} ({count})\n")
        try:
            tree = ast.parse(cell["source"], filename=f"<cell {index}>")
            last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            if last is not None:
                tree.body = tree.body[:-1]
            exec(compile(tree, f"<{Path(src).stem} cell {index}>", "exec"), ns)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), f"<{Path(src).stem} cell {index}>", "eval"), ns)
                if value is not None and not hasattr(value, "savefig"):
                    outputs.append({"output_type": "execute_result", "execution_count": count,
                                    "metadata": {}, "data": {"text/plain": repr(value)}})
        except BaseException as err:                  # noqa: BLE001 -- recorded, as Jupyter would
            if isinstance(err, KeyboardInterrupt):
                raise
            tb = traceback.format_exception(type(err), err, err.__traceback__)
            tb = [line for line in tb if "grader/gpu_check.py" not in line]
            outputs.append({"output_type": "error", "ename": type(err).__name__,
                            "evalue": str(err), "traceback": tb})
            summary["ok"] = False
            summary["errors"].append(f"cell {index}: {type(err).__name__}: {str(err)[:300]}")
            real_err.write("".join(tb))
        finally:
            sys.stdout, sys.stderr = real_out, real_err
        show()                                        # figures left open, as the inline backend does
        seconds = time.perf_counter() - cell_start
        for out in outputs:
            if out["output_type"] == "stream":
                out["text"] = _clean_stream(out["text"])
        cell["outputs"], cell["execution_count"] = outputs, count
        cell.setdefault("metadata", {})["gpu_check"] = {"seconds": round(seconds, 3)}
        summary["cell_seconds"].append([index, round(seconds, 3)])
        summary["figures"] += sum("image/png" in o.get("data", {}) for o in outputs)
        summary["cells"] = count
        summary["seconds"] = round(time.perf_counter() - start, 2)
        Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    summary["summary"] = _jsonable(SUMMARIES.get(Path(src).stem, lambda ns: {})(ns))
    if summary_path:
        Path(summary_path).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    return str(value)


def _summary_07(ns):
    """Notebook 07's own training run: mode, accuracy and seconds, read from its variables."""
    history, settings = ns.get("history"), ns.get("SETTINGS")
    if not isinstance(history, dict) or not history.get("test_accuracy"):
        return {"mode": ns.get("MODE")}
    acc, secs = history["test_accuracy"], history["seconds"]
    return {"mode": ns.get("MODE"), "device": str(ns.get("DEVICE")), "settings": settings,
            "test_images": (settings or {}).get("test_size"),
            "test_accuracy": acc[-1], "training_seconds": secs[-1],
            "seconds_to_99": next((t for t, a in zip(secs, acc) if a >= 0.99), None),
            "test_accuracy_by_epoch": acc, "seconds_by_epoch": secs,
            "trained_by": getattr(ns.get("model"), "trained_by", None) or "train_model"}


SUMMARIES = {NOTEBOOK_07: _summary_07}


# ---------------------------------------------------------------- the check (parent)

class _Log:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")

    def __call__(self, text, echo=True):
        self.file.write(text + "\n")
        self.file.flush()
        if echo:
            print(text, flush=True)


def _child_env(dry_run):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("COURSE_DATA", str(ROOT / "data"))
    env["MPLBACKEND"] = "Agg"
    env["PYTHONWARNINGS"] = "ignore"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NBGRADER_EXECUTION", None)              # FULL mode needs it unset
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["NBGRADER_EXECUTION"] = "autograde"      # the notebooks' smallest settings
    return env


def _run(cmd, log, timeout, env, cwd):
    """Run cmd, its output into the log; (returncode, timed_out, seconds). Kills its whole process
    group at the time limit."""
    log(f"$ {' '.join(map(str, cmd))}   (cwd {cwd}, limit {timeout:.0f} s)")
    start = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def pump():
        for raw in iter(proc.stdout.readline, b""):
            log(raw.decode("utf-8", "replace").rstrip("\n").rsplit("\r", 1)[-1], echo=False)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=10)
    seconds = time.perf_counter() - start
    log(f"  -> exit {proc.returncode}{' (time limit)' if timed_out else ''} after {seconds:.1f} s")
    return proc.returncode, timed_out, seconds


def _git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _machine(dry_run):
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "platform": platform.platform()}
    try:
        info["cudnn"] = torch.backends.cudnn.version()
    except Exception:                                 # noqa: BLE001 -- a CPU-only build
        info["cudnn"] = None
    if torch.cuda.is_available() and not dry_run:
        info["device"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores; dry run)"
        info["gpu_count"] = 0
    return info


def verdict(data):
    """[(target, value, ok)] for each target whose figure is in `data` (None: not measured)."""
    rows = []
    for label, (section, key, field, op, limit) in TARGETS.items():
        if section == "top":
            value = data.get(field)
        elif section == "notebooks":            # a FULL-mode target: FAST mode (a dry run) is not measured
            summary = (data.get("notebooks", {}).get(key) or {}).get("summary", {})
            value = summary.get(field) if summary.get("mode") == "FULL" else None
        else:
            value = (data.get("bench", {}).get(key) or {}).get(field)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            rows.append((f"{label} {op} {limit:g}", value, None))
            continue
        ok = value <= limit if op == "<=" else value >= limit
        rows.append((f"{label} {op} {limit:g}", value, ok))
    return rows


def run_check(out, dry_run=False, budget=BUDGET, steps=("07", "bench", "06"), solutions=SOLUTIONS):
    """Run the steps, write OUT/gpu.json and OUT/gpu-check.log; return the JSON's dict.
    `solutions` is where the notebooks are read from (tests point it at small stand-ins)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out / "gpu-check.log")
    started = time.perf_counter()
    deadline = started + budget
    env = _child_env(dry_run)
    me = [sys.executable, "-m", "grader.gpu_check"]
    log(f"gpu-check {'(dry run) ' if dry_run else ''}started {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
        f" in {ROOT}, budget {budget:.0f} s, python {platform.python_version()}")
    data = {"format": 1, "dry_run": bool(dry_run), "command": " ".join(["python3", "-m", "grader", "gpu-check"] + sys.argv[1:]),
            "bench": {}, "notebooks": {}, "steps": []}

    def remaining(limit):
        return min(limit, deadline - time.perf_counter())

    for step in steps:
        if step == "bench":
            # One `grader bench` per benchmark: `bench --json` writes its file at the end, so a
            # benchmark cut by its time limit would otherwise lose the other one's figures too.
            for bench_name in BENCHMARKS:
                left = remaining(LIMITS[bench_name])
                path = out / f"bench-{bench_name}.json"
                if left < 5:
                    data["bench"][bench_name] = {"error": "not run: no time left"}
                    data["steps"].append({"step": bench_name, "ok": False, "why": "no time left"})
                    continue
                code, timed_out, secs = _run(me + ["bench", "--only", bench_name, "--json", path], log, left, env, ROOT)
                result = None
                if path.exists():
                    try:
                        result = json.loads(path.read_text()).get("results", {}).get(bench_name)
                    except ValueError:
                        pass
                if result is None:
                    result = {"error": f"time limit of {left:.0f} s" if timed_out else f"no result (exit {code})"}
                data["bench"][bench_name] = result
                data["steps"].append({"step": bench_name, "ok": code == 0 and not timed_out and "error" not in result,
                                      "seconds": round(secs, 1), "timed_out": timed_out})
            (out / "bench.json").write_text(json.dumps({"results": data["bench"]}, indent=2) + "\n")
            continue
        name = {"07": NOTEBOOK_07, "06": NOTEBOOK_06}[step]
        src, dst, summ = Path(solutions) / f"{name}.ipynb", out / f"{name}.ipynb", out / f".{name}.summary.json"
        left = remaining(LIMITS[name])
        if left < 5:
            data["notebooks"][name] = {"ok": False, "errors": ["not run: no time left"]}
            data["steps"].append({"step": name, "ok": False, "why": "no time left"})
            continue
        code, timed_out, secs = _run(me + ["execute", src, dst, "--summary", summ], log, left, env, src.parent)
        result = {"ok": False, "errors": [], "figures": 0}
        if summ.exists():
            result = json.loads(summ.read_text())
            summ.unlink()
        elif dst.exists():                              # cut by the time limit: count what it ran
            executed = _cells(dst)
            ran = [c for c in executed["cells"] if c["cell_type"] == "code" and c.get("execution_count")]
            result["figures"] = sum("image/png" in o.get("data", {}) for c in ran for o in c.get("outputs", []))
            result["errors"] = [f"stopped after {len(ran)} code cells"]
        if timed_out:
            result["errors"].append(f"time limit of {left:.0f} s")
        result.update(ok=bool(result.get("ok")) and code == 0 and not timed_out, timed_out=timed_out,
                      seconds=round(secs, 1))
        data["notebooks"][name] = result
        data["steps"].append({"step": name, "ok": result["ok"], "seconds": round(secs, 1), "timed_out": timed_out})
        log(f"  {name}: {'ok' if result['ok'] else 'FAILED'}, {result.get('figures', 0)} figures"
            + "".join(f"\n    {e}" for e in result.get("errors", [])[:10]))

    now = datetime.now(timezone.utc)
    data.update(_machine(dry_run))
    data.update(date=now.isoformat(timespec="seconds"), day=now.date().isoformat(), commit=_git_commit(),
                seconds=round(time.perf_counter() - started, 1),
                ok=all(s.get("ok") for s in data["steps"]))
    data["verdict"] = [{"target": t, "value": v, "met": ok} for t, v, ok in verdict(data)]
    (out / "gpu.json").write_text(json.dumps(data, indent=2) + "\n")
    log(f"\n{'DRY RUN on ' if dry_run else ''}{data['device']}, torch {data['torch']}, "
        f"CUDA {data['cuda']}, cuDNN {data['cudnn']}, {data['date']}: {data['seconds']:.0f} s in all")
    for row in data["verdict"]:
        state = "not measured" if row["met"] is None else "met" if row["met"] else "MISSED"
        log(f"  {row['target']:72s} {state:12s} {row['value']}")
    log(f"wrote {out / 'gpu.json'}; " + ("every step ran" if data["ok"] else "SOME STEPS FAILED (see above and the log)"))
    return data


# ---------------------------------------------------------------- command line

def add_arguments(parser):
    parser.add_argument("--out", required=True, metavar="OUT", help="folder for the executed notebooks, JSON and log")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU only, the notebooks' small settings: test the pipeline without a GPU")
    parser.add_argument("--budget", type=float, default=BUDGET, metavar="SECONDS",
                        help=f"time limit of the whole check (default {BUDGET})")
    parser.add_argument("--steps", nargs="+", default=["07", "bench", "06"], choices=["07", "bench", "06"],
                        help="run only these steps (default: all, in this order)")


def main(args):
    if not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            print("gpu-check: no CUDA GPU here. Run it on a GPU machine, or add --dry-run to test the "
                  "pipeline on this CPU.", file=sys.stderr)
            return 2
    data = run_check(args.out, dry_run=args.dry_run, budget=args.budget, steps=args.steps)
    return 0 if data["ok"] else 1


def _internal(argv):
    """The children: `execute SRC DST [--summary PATH]` and `bench ARGS` (grader.bench's parser)."""
    if argv[0] == "execute":
        p = argparse.ArgumentParser(prog="python -m grader.gpu_check execute")
        p.add_argument("src")
        p.add_argument("dst")
        p.add_argument("--summary")
        a = p.parse_args(argv[1:])
        summary = execute_notebook(a.src, a.dst, a.summary)
        return 0 if summary["ok"] else 1
    from . import bench
    p = argparse.ArgumentParser(prog="python -m grader bench")
    bench.add_arguments(p)
    return bench.main(p.parse_args(argv[1:]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("execute", "bench"):
        sys.exit(_internal(sys.argv[1:]))
    parser = argparse.ArgumentParser(prog="python3 -m grader gpu-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
