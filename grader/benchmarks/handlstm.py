"""handlstm-cpu / handlstm-gpu: forward+backward of notebook 05's HandLSTM against nn.LSTM.

The hand-written LSTM comes from the solutions notebook (grader.solution_code.load("06_hand_written_bilstm")):
`handlstm_ms` times its optimised variant FastHandLSTM (hand-written backward pass, section 6),
`plain_ms` the plain HandLSTM of Exercises 1-4. Shape of the course target (spec section 5):
T=28, B=256, input 28, hidden 128, 2 layers, bidirectional. The models run interleaved, in a
rotating order, and every figure is a median over the same rounds, so `ratio` compares
measurements taken under the same machine load.
"""
import statistics
import time

from ..bench import Skip, benchmark

SHAPE = dict(seq_len=28, batch=256, input_size=28, hidden_size=128, num_layers=2)


def measure(device, seq_len=28, batch=256, input_size=28, hidden_size=128, num_layers=2,
            rounds=7, warmup=2, seed=0):
    """Median milliseconds of one forward+backward pass for nn.LSTM, FastHandLSTM and HandLSTM."""
    import torch
    from .. import solution_code

    ns = solution_code.load("06_hand_written_bilstm")
    device = torch.device(device)
    torch.manual_seed(seed)
    reference = torch.nn.LSTM(input_size, hidden_size, num_layers, bidirectional=True).to(device)
    models = {"nnlstm": reference}
    for key, cls in (("handlstm", ns["FastHandLSTM"]), ("plain", ns["HandLSTM"])):
        model = cls(input_size, hidden_size, num_layers, bidirectional=True).to(device)
        model.load_state_dict(reference.state_dict())
        models[key] = model
    x = torch.randn(seq_len, batch, input_size, device=device, requires_grad=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def once(model):
        model.zero_grad(set_to_none=True)
        x.grad = None
        sync()
        start = time.perf_counter()
        out, (h, c) = model(x)
        (out.sum() + h.sum() + c.sum()).backward()
        sync()
        return time.perf_counter() - start

    with torch.no_grad():                     # the comparison is only meaningful if they agree
        want = reference(x)[0]
        diff = max((models[k](x)[0] - want).abs().max().item() for k in ("handlstm", "plain"))
    keys = list(models)
    times = {k: [] for k in keys}
    for r in range(warmup + rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]   # rotate: no model always goes first
        for k in order:
            seconds = once(models[k])
            if r >= warmup:
                times[k].append(seconds)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"handlstm_ms": round(ms["handlstm"], 3), "nnlstm_ms": round(ms["nnlstm"], 3),
            "ratio": round(ms["handlstm"] / ms["nnlstm"], 3),
            "plain_ms": round(ms["plain"], 3), "plain_ratio": round(ms["plain"] / ms["nnlstm"], 3),
            "max_abs_diff": float(f"{diff:.3g}"), "rounds": rounds, "device": str(device),
            "threads": torch.get_num_threads()}


@benchmark("handlstm-cpu")
def handlstm_cpu():
    return measure("cpu", **SHAPE)


@benchmark("handlstm-gpu")
def handlstm_gpu():
    import torch
    if not torch.cuda.is_available():
        raise Skip("no CUDA device")
    return measure("cuda", **SHAPE, rounds=20, warmup=5)
