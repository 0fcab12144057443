"""python -m grader bench [--only NAME ...] [--json PATH]: the course's performance figures.

Benchmarks live in grader/benchmarks/*.py and register themselves with @benchmark(name).
Figures are measured, never typed in; a benchmark that cannot run here says why (Skip).
"""
import importlib
import json
import pkgutil
import platform
import time
from datetime import datetime, timezone

REGISTRY = {}


class Skip(Exception):
    """Raised by a benchmark that cannot run on this machine (e.g. no CUDA)."""


def benchmark(name):
    def register(fn):
        REGISTRY[name] = fn
        return fn
    return register


def discover():
    from . import benchmarks
    for mod in pkgutil.iter_modules(benchmarks.__path__):
        importlib.import_module(f"{benchmarks.__name__}.{mod.name}")
    return REGISTRY


def machine():
    import torch
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(args):
    registry = discover()
    names = args.only or list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        print(f"Unknown benchmark(s): {', '.join(unknown)}. Known: {', '.join(registry)}")
        return 2
    results = {}
    for name in names:
        start = time.perf_counter()
        try:
            figures = registry[name]()
        except Skip as why:
            print(f"{name:16s} skipped: {why}")
            results[name] = {"skipped": str(why)}
            continue
        figures["wall_seconds"] = round(time.perf_counter() - start, 2)
        results[name] = figures
        print(f"{name:16s} " + "  ".join(f"{k}={fmt(v)}" for k, v in figures.items()), flush=True)
    if args.json:
        payload = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": machine(), "results": results}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def add_arguments(parser):
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
