"""handlstm-cpu / handlstm-gpu: forward+backward of notebook 06's hand-written LSTMs against nn.LSTM.

The models come from the solutions notebook (grader.solution_code.load with the cells tagged
"support"), so the benchmark times exactly what the notebook teaches:

- `plain`: HandLSTM, the graded exercises (a Python loop over time, autograd records every step);
- `backward`: FastHandLSTM, HandLSTM with the optional hand-written backward pass (section 7);
- `fused`: FusedLSTM (section 6): both directions per step in one batched product, gates
  reordered so one sigmoid covers three, inputs unbound once;
- `graphed` (GPU): FusedLSTM with forward and backward captured as CUDA graphs (graph_lstm);
- `plain_graphed` (GPU): HandLSTM in CUDA graphs, what the graphs alone do to the plain loop;
- `compiled` (GPU, when torch.compile works there): `graphed` with the gate math compiled.

Shape of the course target (spec section 5): T=28, B=256, I=28, H=128, 2 layers, bidirectional,
float32. The models run interleaved, in a rotating order, and every time is a median over the
same rounds, so a ratio compares measurements taken under the same load. Before timing, every
model is checked against nn.LSTM in values and gradients (`*_max_rel_diff`; on the GPU with
cuDNN's TF32 off for that check); on the GPU, `graphed` is also checked in float64 against the
CPU's nn.LSTM (`graphed_f64_max_abs_diff`, must be <= 1e-8).

On the GPU each measurement runs in a child process (`python -m grader.benchmarks.handlstm child
...`, with a time limit): a CUDA graph capture or a compilation that fails cannot leave this
process's CUDA context broken for the benchmarks after it. The compiled variant runs in a child
of its own, timed against its own nn.LSTM rounds (`compiled_nnlstm_ms`), and reports
`compiled_error` instead of figures when torch.compile does not work there.

Headline figures: `handlstm_ms` / `ratio` are FastHandLSTM on the CPU (`handlstm-cpu`, target
<= 1.5) and FusedLSTM in a CUDA graph on the GPU (`handlstm-gpu`, target <= 3.0, moonshot <= 1.5);
`handlstm_model` names it. On the GPU the profiler splits the gap between eager FusedLSTM and
cuDNN: `launch_overhead_ms` = fused_ms - fused_busy_ms (wall time the GPU spent idle, waiting for
launches) and `arithmetic_gap_ms` = fused_busy_ms - nnlstm_busy_ms (more, smaller kernels), where
`*_busy_ms` is the sum of the kernels' durations in one profiled pass and `*_kernels` their count.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..bench import Skip, benchmark

SHAPE = dict(seq_len=28, batch=256, input_size=28, hidden_size=128, num_layers=2)
NAME = "06_hand_written_bilstm"
ROOT = Path(__file__).resolve().parent.parent.parent
CHILD_TIMEOUT_S = {"main": 110, "compiled": 80}     # the whole benchmark stays under about 3 minutes
LABELS = {"plain": "HandLSTM", "plain_graphed": "HandLSTM in a CUDA graph",
          "backward": "FastHandLSTM (hand-written backward)", "fused": "FusedLSTM",
          "graphed": "FusedLSTM in a CUDA graph", "compiled": "FusedLSTM, compiled gate math, CUDA graph"}


def load_models():
    """The notebook's namespace: setup cell, answer cells and the support cell (FusedLSTM, graph_lstm)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    from .. import solution_code
    return solution_code.load(NAME, extra_tags=("support",))


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fwd_bwd(model, x, weights=None):
    """One forward+backward with fresh gradients; returns [out, h_n, c_n, x.grad, *param grads]."""
    model.zero_grad(set_to_none=True)
    x.grad = None
    out, (h, c) = model(x)
    if weights is None:
        loss = out.sum() + h.sum() + c.sum()
    else:
        loss = sum((t * w).sum() for t, w in zip((out, h, c), weights))
    loss.backward()
    return [out, h, c, x.grad] + [p.grad for p in model.parameters()]


def _max_rel_diff(got, want):
    """Largest |got - want| / max|want| over the tensors of two _fwd_bwd results."""
    worst = 0.0
    for a, b in zip(got, want):
        scale = b.detach().abs().max().item() or 1.0
        worst = max(worst, (a.detach().double() - b.detach().double()).abs().max().item() / scale)
    return worst


def build(ns, key, device, reference, x):
    """Model `key` on `device` with the reference's weights; graphed variants captured for x."""
    import torch
    I, H, L = reference.input_size, reference.hidden_size, reference.num_layers
    cls = {"plain": ns["HandLSTM"], "plain_graphed": ns["HandLSTM"],
           "backward": ns["FastHandLSTM"]}.get(key, ns.get("FusedLSTM"))
    model = cls(I, H, L, bidirectional=True).to(device=device, dtype=x.dtype)
    model.load_state_dict(reference.state_dict())
    if key == "compiled":
        model.pointwise = torch.compile(ns["lstm_pointwise"], fullgraph=True, dynamic=False)
    if key in ("graphed", "compiled", "plain_graphed"):
        model = ns["graph_lstm"](model, x)
    return model


def _profile(model, x):
    """(GPU-busy ms, kernel count) of one forward+backward, from torch.profiler's CUDA activity."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _fwd_bwd(model, x)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return round(sum(e.time_range.elapsed_us() for e in kernels) / 1e3, 3), len(kernels)


def graphed_f64_check(ns, device):
    """FusedLSTM in CUDA graphs, float64, small, against the CPU's nn.LSTM: largest abs difference
    over outputs and gradients (input and every parameter)."""
    import torch
    torch.manual_seed(1)
    reference = torch.nn.LSTM(3, 4, 2, bidirectional=True).double()
    x_cpu = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(2)
    want = _fwd_bwd(reference, x_cpu)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in want[:3]]
    want = _fwd_bwd(reference, x_cpu, weights)
    x = x_cpu.detach().to(device).requires_grad_()
    model = build(ns, "graphed", device, reference.to(device), x)
    got = _fwd_bwd(model, x, [w.to(device) for w in weights])
    return max((a.detach().cpu() - b.detach()).abs().max().item() for a, b in zip(got, want))


def measure(device, seq_len=28, batch=256, input_size=28, hidden_size=128, num_layers=2,
            rounds=7, warmup=2, seed=0, keys=None, profile=None):
    """Median ms of one forward+backward for nn.LSTM and each hand-written model, with ratios,
    value/gradient checks and (GPU) the profiler's split of the gap. Returns a dict of figures."""
    import torch
    ns = load_models()
    device = torch.device(device)
    gpu = device.type == "cuda"
    if keys is None:
        keys = ["plain", "backward", "fused"] + (["plain_graphed", "graphed"] if gpu else [])
    profile = gpu if profile is None else profile
    torch.manual_seed(seed)
    reference = torch.nn.LSTM(input_size, hidden_size, num_layers, bidirectional=True).to(device)
    x = torch.randn(seq_len, batch, input_size, device=device, requires_grad=True)
    fig = {"device": torch.cuda.get_device_name(device) if gpu else "cpu", "torch": torch.__version__,
           "shape": dict(T=seq_len, B=batch, I=input_size, H=hidden_size, L=num_layers, D=2)}
    if gpu:
        fig["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        fig["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32

    # the reference's results, with cuDNN's TF32 off so that the check compares float32 with float32
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        want = [t.detach().clone() for t in _fwd_bwd(reference, x)]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    models = {"nnlstm": reference}
    for key in keys:
        try:
            model = build(ns, key, device, reference, x)
            fig[f"{key}_max_rel_diff"] = float(f"{_max_rel_diff(_fwd_bwd(model, x), want):.3g}")
        except Exception as err:                  # noqa: BLE001 -- recorded; the others still run
            if key in ("plain", "fused"):
                raise
            fig[f"{key}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
            continue
        models[key] = model

    names = list(models)
    times = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]   # rotate: no model always goes first
        for k in order:
            models[k].zero_grad(set_to_none=True)
            x.grad = None
            _sync(device)
            t0 = time.perf_counter()
            out, (h, c) = models[k](x)
            (out.sum() + h.sum() + c.sum()).backward()
            _sync(device)
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    fig["nnlstm_ms"] = round(ms["nnlstm"], 3)
    for k in names[1:]:
        fig[f"{k}_ms"] = round(ms[k], 3)
        fig[f"{k}_ratio"] = round(ms[k] / ms["nnlstm"], 3)

    head = [k for k in (("graphed", "fused") if gpu else ("backward", "fused")) if k in models]
    if head:
        fig["handlstm_model"] = LABELS[head[0]]
        fig["handlstm_ms"] = fig[f"{head[0]}_ms"]
        fig["ratio"] = fig[f"{head[0]}_ratio"]
    fig["max_rel_diff"] = max([v for k, v in fig.items() if k.endswith("_max_rel_diff")], default=None)

    if profile:
        try:
            for k in ("nnlstm", "plain", "fused", "graphed"):
                if k in models:
                    fig[f"{k}_busy_ms"], fig[f"{k}_kernels"] = _profile(models[k], x)
            fig["fused_gap_ms"] = round(fig["fused_ms"] - fig["nnlstm_ms"], 3)
            fig["launch_overhead_ms"] = round(fig["fused_ms"] - fig["fused_busy_ms"], 3)
            fig["arithmetic_gap_ms"] = round(fig["fused_busy_ms"] - fig["nnlstm_busy_ms"], 3)
        except Exception as err:                  # noqa: BLE001
            fig["profile_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        if gpu:
            try:
                diff = graphed_f64_check(ns, device)
                fig["graphed_f64_max_abs_diff"] = float(f"{diff:.3g}")
                fig["graphed_f64_equal"] = diff <= 1e-8
            except Exception as err:              # noqa: BLE001
                fig["graphed_f64_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    fig.update(rounds=rounds, threads=torch.get_num_threads())
    return fig


@benchmark("handlstm-cpu")
def handlstm_cpu():
    return measure("cpu", **SHAPE)


def _run_child(device, keys, profile, timeout, shape=None):
    """measure(device, **shape, keys=keys) in a child process (shape: SHAPE by default); its figures,
    or {"error": why}."""
    shape = SHAPE if shape is None else shape
    with tempfile.TemporaryDirectory(prefix="handlstm-") as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, "-m", "grader.benchmarks.handlstm", "child", "--device", device,
               "--keys", ",".join(keys), "--out", str(out), "--shape", json.dumps(shape)] + \
            (["--profile"] if profile else [])
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"error": f"no result within {timeout} s"}
        if out.exists():
            return json.loads(out.read_text())
        return {"error": f"exit status {proc.returncode}: {(proc.stderr or proc.stdout)[-600:]}"}


@benchmark("handlstm-gpu")
def handlstm_gpu():
    import torch
    if not torch.cuda.is_available():
        raise Skip("no CUDA")
    fig = _run_child("cuda", ["plain", "plain_graphed", "backward", "fused", "graphed"], True,
                     CHILD_TIMEOUT_S["main"])
    if "error" in fig:
        raise RuntimeError(f"handlstm-gpu: {fig['error']}")
    compiled = _run_child("cuda", ["compiled"], False, CHILD_TIMEOUT_S["compiled"])
    if "compiled_ms" in compiled:
        fig.update(compiled_ms=compiled["compiled_ms"], compiled_ratio=compiled["compiled_ratio"],
                   compiled_nnlstm_ms=compiled["nnlstm_ms"], compiled_max_rel_diff=compiled["compiled_max_rel_diff"])
    else:
        fig["compiled_error"] = compiled.get("compiled_error") or compiled.get("error") or "no figure"
    return fig


def _tomllib_shim():
    """grader.paths imports tomllib (Python >= 3.11); the GPU machine's Python may be older and
    this child never reads course.toml."""
    try:
        import tomllib  # noqa: F401
    except ModuleNotFoundError:
        import types
        sys.modules["tomllib"] = types.ModuleType("tomllib")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m grader.benchmarks.handlstm")
    parser.add_argument("mode", choices=["child"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--keys", default="plain,plain_graphed,backward,fused,graphed")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", default=json.dumps(SHAPE), help="JSON: measure()'s size arguments")
    args = parser.parse_args(argv)
    _tomllib_shim()
    rounds, warmup = (20, 5) if args.device == "cuda" else (7, 2)
    fig = measure(args.device, **json.loads(args.shape), rounds=rounds, warmup=warmup, keys=args.keys.split(","),
                  profile=args.profile)
    Path(args.out).write_text(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
