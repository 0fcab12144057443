"""The student's end of the judge's bridge: runs INSIDE the student's kernel.

The grader sends this file's source to the kernel before any student cell runs (it is never
imported there). `install(token)` puts one function, `_grader_serve_<token>`, in builtins. The
grader then runs `_grader_serve_<token>("<base64 request>")` in the kernel for each thing the
judge asks: look a name up, call a function, read an attribute, run a backward pass. Requests come
from the judge (trusted; plain pickle). Replies are published as one display_data output,
`torch.save` bytes in base64, built ONLY from tagged tuples of plain values and tensors, because
the judge reads them with `torch.load(weights_only=True)` and checks every type.

Nothing here is a security boundary: student code can replace all of it. It can then only make
its own answers wrong or unreadable; the verdict is decided in the judge (see judge.py and
GRADING_SECURITY.md).
"""

REPLY_MIME = "application/x-grader-reply"


def install(token):
    import base64
    import builtins
    import collections
    import collections.abc
    import io
    import os
    import pickle
    import re
    import sys
    
    import torch
    from IPython import get_ipython
    from IPython.display import publish_display_data

    shell = get_ipython()
    objects = {}        # handle -> object (kept alive for the whole notebook)
    handles = {}        # id(object) -> handle: one handle per object, so `m.train() is m`
    calls = {}          # call id -> (differentiable outputs, student leaf per judge input slot)
    PackedSequence = torch.nn.utils.rnn.PackedSequence
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is part of the course's environment
        numpy = None

    def new_handle(obj):
        handle = handles.get(id(obj))
        if handle is None:
            handle = handles[id(obj)] = len(objects) + 1
            objects[handle] = obj
        return handle

    def class_info(cls):
        mro = []
        for c in getattr(cls, "__mro__", (cls,)):
            mro.append(f"{getattr(c, '__module__', '?')}.{getattr(c, '__qualname__', '?')}")
        return {"name": str(getattr(cls, "__name__", "object")), "mro": mro}

    # ------------------------------------------------------------------ student -> judge

    def encode(value, args, depth=0):
        """Tagged plain data; see judge.decode for the grammar."""
        if depth > 60:
            raise ValueError("value nested too deeply to send")
        if id(value) in args:
            return ("arg", args[id(value)])
        if value is None:
            return ("none",)
        if isinstance(value, bool) or (numpy is not None and isinstance(value, numpy.bool_)):
            return ("bool", bool(value))
        if isinstance(value, int) or (numpy is not None and isinstance(value, numpy.integer)):
            return ("int", int(value))
        if isinstance(value, float) or (numpy is not None and isinstance(value, numpy.floating)):
            return ("float", float(value))
        if isinstance(value, complex):
            return ("complex", float(value.real), float(value.imag))
        if isinstance(value, str):
            return ("str", str(value))
        if isinstance(value, torch.Size):
            return ("size", [int(n) for n in value])
        if isinstance(value, torch.dtype):
            return ("dtype", str(value).replace("torch.", ""))
        if isinstance(value, torch.device):
            return ("device", str(value))
        if isinstance(value, torch.Tensor):
            return encode_tensor(value)
        if numpy is not None and isinstance(value, numpy.ndarray) and value.dtype != object:
            return ("ndarray", torch.from_numpy(numpy.ascontiguousarray(value).copy()))
        if isinstance(value, PackedSequence):
            return ("packed",) + tuple(encode(getattr(value, f), args, depth + 1)
                                       for f in ("data", "batch_sizes", "sorted_indices",
                                                 "unsorted_indices"))
        if isinstance(value, collections.OrderedDict):
            return ("odict", [(encode(k, args, depth + 1), encode(v, args, depth + 1))
                              for k, v in value.items()])
        if isinstance(value, dict):
            return ("dict", [(encode(k, args, depth + 1), encode(v, args, depth + 1))
                             for k, v in value.items()])
        if isinstance(value, tuple):
            return ("tuple", [encode(v, args, depth + 1) for v in value])
        if isinstance(value, list):
            return ("list", [encode(v, args, depth + 1) for v in value])
        if isinstance(value, (collections.abc.Iterator, range)):
            return ("iter", [encode(v, args, depth + 1) for v in list(value)])
        if isinstance(value, type):
            return ("class", new_handle(value), class_info(value))
        cls = type(value)
        name = getattr(value, "__name__", None)
        return ("handle", new_handle(value), new_handle(cls), class_info(cls), callable(value),
                name[:200] if isinstance(name, str) else "")

    def plain(t):
        """A detached, contiguous CPU copy of a tensor, of class torch.Tensor."""
        t = t.detach()
        if type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        return t.to("cpu").clone().contiguous()

    def encode_tensor(t):
        if t.device.type == "meta":
            return ("meta", [int(n) for n in t.shape], str(t.dtype).replace("torch.", ""),
                    bool(t.requires_grad))
        slot = None
        if t.requires_grad and t.grad_fn is not None and current_call is not None:
            current_call["outputs"].append(t)
            slot = len(current_call["outputs"]) - 1
        grad = t.grad if t.is_leaf else None
        return ("tensor", plain(t), bool(t.requires_grad), None if grad is None else plain(grad),
                slot, str(t.device), isinstance(t, torch.nn.Parameter))

    # ------------------------------------------------------------------ judge -> student

    def rebuild(value, inputs, originals):
        """Turn the judge's placeholders into objects: tensors, modules, handles."""
        kind = value[0]
        if kind == "value":
            return value[1]
        if kind == "meta":
            _, shape, dtype, requires_grad = value
            t = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            t = t.requires_grad_(True) if requires_grad else t
            originals.append((t, None, None))
            return t
        if kind == "tensor":
            _, t, requires_grad, grad, slot, device = value
            t = t.to(device)
            if requires_grad:
                t.requires_grad_(True)
            if grad is not None:
                t.grad = grad.to(device)
            originals.append((t, t.detach().clone(), None if t.grad is None else t.grad.clone()))
            if slot is not None:
                inputs[slot] = t
            return t
        if kind == "module":
            _, data, grads, slots = value
            module = torch.load(io.BytesIO(data), weights_only=False)
            params = dict(module.named_parameters())
            for name, grad in grads.items():
                params[name].grad = grad.to(params[name].device)
            for name, slot in slots.items():
                inputs[slot] = params[name]
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            originals.append((module, state, {n: None if p.grad is None else p.grad.clone()
                                              for n, p in params.items()}))
            return module
        if kind == "handle":
            return objects[value[1]]
        if kind == "tuple":
            return tuple(rebuild(v, inputs, originals) for v in value[1])
        if kind == "list":
            return [rebuild(v, inputs, originals) for v in value[1]]
        if kind == "dict":
            return {k: rebuild(v, inputs, originals) for k, v in value[1]}
        if kind == "odict":
            return collections.OrderedDict((k, rebuild(v, inputs, originals)) for k, v in value[1])
        if kind == "packed":
            return PackedSequence(*[None if v is None else rebuild(v, inputs, originals)
                                    for v in value[1]])
        raise ValueError(f"unknown placeholder {kind!r}")

    def changes(originals):
        """What the call changed in the judge's arguments: [(index, new state) or None]."""
        out = []
        for obj, before, grads in originals:
            if isinstance(obj, torch.Tensor) and before is None:
                out.append(("none",))           # a meta tensor: nothing to copy back
            elif isinstance(obj, torch.Tensor):
                data = None if torch.equal(obj.detach(), before) and obj.shape == before.shape \
                    else plain(obj)
                grad = obj.grad if obj.is_leaf else None
                same_grad = (grad is None and grads is None) or (
                    grad is not None and grads is not None and grad.shape == grads.shape
                    and torch.equal(grad, grads))
                out.append(("tensor", data, "same" if same_grad else
                            (None if grad is None else plain(grad))))
            else:
                state = {k: plain(v) for k, v in obj.state_dict().items()
                         if k not in before or v.shape != before[k].shape
                         or not torch.equal(v.detach(), before[k])}
                new_grads = {}
                for n, p in obj.named_parameters():
                    g = p.grad
                    old = grads.get(n)
                    if (g is None) != (old is None) or (
                            g is not None and (g.shape != old.shape or not torch.equal(g, old))):
                        new_grads[n] = None if g is None else plain(g)
                out.append(("module", state, new_grads, bool(obj.training)))
        return out

    # ------------------------------------------------------------------ the guard

    def guard_mode(pattern, sources=()):
        from torch.overrides import TorchFunctionMode
        forbidden = re.compile(pattern) if pattern else None
        sources = tuple(s for s in sources if type(s) is str and s)

        class _Guard(TorchFunctionMode):
            def __init__(self):
                super().__init__()
                self.used = set()

            def __torch_function__(self, func, types_, args=(), kwargs=None):
                base = (getattr(func, "__name__", "") or "").split(".")[0]
                if forbidden is not None and forbidden.search(base):
                    self.used.add(base)
                    raise AssertionError(
                        f"this must be written by hand, but it calls the built-in {base}")
                frame = sys._getframe(1) if sources else None
                while frame is not None:        # called from inside a forbidden torch file
                    if frame.f_code.co_filename.endswith(sources):
                        where = sources[0].replace(os.sep, ".").removesuffix(".py")
                        self.used.add(where)
                        raise AssertionError(
                            f"this must be written by hand, but it calls the built-in {where}")
                    frame = frame.f_back
                return func(*args, **(kwargs or {}))
        return _Guard()

    # ------------------------------------------------------------------ requests

    current_call = None

    def target_of(ref):
        kind = ref[0]
        if kind == "handle":
            return objects[ref[1]]
        raise ValueError(f"unknown target {kind!r}")

    def do_call(req):
        nonlocal current_call
        inputs, originals = {}, []
        fn = target_of(req["target"])
        if req.get("method"):
            fn = getattr(fn, req["method"])
        args = rebuild(req["args"], inputs, originals)
        kwargs = rebuild(req["kwargs"], inputs, originals)
        if req.get("rng") is not None:
            torch.set_rng_state(req["rng"])
        sources = req.get("guard_sources") or ()
        guard = guard_mode(req.get("guard"), sources) \
            if req.get("guard") or sources else None
        record = {"outputs": [], "inputs": inputs}
        outcome, used = None, []
        try:
            with torch.set_grad_enabled(req.get("grad", True)):
                if guard is not None:
                    with guard:
                        result = fn(*args, **kwargs)
                else:
                    result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the judge
            outcome = raised(exc)
        finally:
            if guard is not None:
                used = sorted(guard.used)
        arg_ids = {id(obj): k for k, (obj, _, _) in enumerate(originals)}
        if outcome is None:
            current_call = record
            try:
                outcome = ("ok", encode(result, arg_ids))
            finally:
                current_call = None
        call_id = None
        if record["outputs"]:
            call_id = len(calls) + 1
            calls[call_id] = record
        return (outcome[0], outcome[1], {"changes": changes(originals), "call": call_id,
                                         "rng": torch.get_rng_state(), "used": used})

    def raised(exc):
        mro = [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__]
        try:
            message = str(exc)
        except BaseException:  # noqa: BLE001 - a student's __str__ may raise
            message = "(the exception's message could not be read)"
        return ("raise", {"mro": mro, "name": type(exc).__name__, "message": message[:4000]})

    def do_backward(req):
        record = calls[req["call"]]
        outputs, grads = [], []
        for t, g in zip(record["outputs"], req["grads"]):
            if g is not None:
                outputs.append(t)
                grads.append(g.to(t.device))
        leaves = record["inputs"]
        for t in leaves.values():
            t.grad = None
        if outputs:
            torch.autograd.backward(outputs, grads, retain_graph=True)
        result = {slot: None if t.grad is None else plain(t.grad) for slot, t in leaves.items()}
        for t in leaves.values():
            t.grad = None
        return ("ok", ("grads", result), {})

    def do_lookup(req):
        ns = shell.user_ns
        found = {}
        for name in req["names"]:
            if name in ns:
                found[name] = encode(ns[name], {})
        return ("ok", ("names", found), {})

    def do_getattr(req):
        obj = target_of(req["target"])
        return ("ok", encode(getattr(obj, req["name"]), {}), {})

    def do_setattr(req):
        inputs, originals = {}, []
        setattr(target_of(req["target"]), req["name"], rebuild(req["value"], inputs, originals))
        return ("ok", ("none",), {})

    def do_release(req):
        calls.clear()
        return ("ok", ("none",), {})

    handlers = {"call": do_call, "backward": do_backward, "lookup": do_lookup,
                "getattr": do_getattr, "setattr": do_setattr, "release": do_release}

    def serve(request_b64):
        try:
            req = pickle.loads(base64.b64decode(request_b64))
            try:
                reply = handlers[req["op"]](req)
            except BaseException as exc:  # noqa: BLE001
                reply = raised(exc) + ({},)
        except BaseException as exc:  # noqa: BLE001 - a broken request must still answer
            reply = ("error", f"{type(exc).__name__}: {exc}"[:2000], {})
        buf = io.BytesIO()
        try:
            torch.save(reply, buf)
        except BaseException as exc:  # noqa: BLE001
            buf = io.BytesIO()
            torch.save(("error", f"the reply could not be written: {exc}"[:2000], {}), buf)
        publish_display_data({REPLY_MIME: base64.b64encode(buf.getvalue()).decode("ascii")})

    setattr(builtins, f"_grader_serve_{token}", serve)
