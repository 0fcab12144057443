"""The judge: the process that runs a notebook's tests and decides its verdicts.

    python -m grader.judge            (started by grader/judged_execute.py, one per notebook)

It has never run student code and never will. It runs the trusted cells of the SOURCE notebook
(the setup cell, the test-helpers cell, the grade cells with their hidden tests) in a namespace
of its own. When a grade cell uses one of the student's names, the judge reaches the student's
kernel through a bridge (grader/student_side.py runs there), and everything that comes back is
plain data, read with `torch.load(weights_only=True)` and checked type by type (`decode`): a
tensor subclass, an `int` whose `==` always holds or a dict that lies cannot reach a test.

What crosses the bridge, and what a grade cell may rely on, is written down in CONTRIBUTING.md
("Grade cells run in the grader's judge").

The judge talks to its parent (the grader's Execute preprocessor) over stdin/stdout: frames of
JSON (and one optional binary blob), see `Channel`. The parent forwards bridge requests to the
student's kernel and the kernel's replies back.
"""
import builtins
import collections
import importlib
import io
import json
import os
import pickle
import re
import struct
import symtable
import sys
import traceback
import warnings

MAX_REPLY_BYTES = 512 << 20      # a student's reply larger than this is refused unread
MAX_NODES = 2_000_000            # tagged values in one reply (a "billion laughs" pickle stops here)
MAX_DEPTH = 80
MAX_TEXT = 100_000               # characters of one message or string kept


class BridgeError(RuntimeError):
    """The student's side could not be reached or answered something unreadable."""


class CellTimeoutError(BaseException):
    """The student's code ran past the cell's time limit (a BaseException, so that a test's
    `except Exception` cannot swallow it)."""


# ---------------------------------------------------------------------------- framing

class Channel:
    """Length-prefixed frames: 4-byte header length, 8-byte blob length, JSON header, blob."""

    def __init__(self, rfile, wfile):
        self.r, self.w = rfile, wfile

    def send(self, header, blob=b""):
        data = json.dumps(header).encode()
        self.w.write(struct.pack(">IQ", len(data), len(blob)) + data + blob)
        self.w.flush()

    def recv(self):
        head = self._read(12)
        n, m = struct.unpack(">IQ", head)
        header = json.loads(self._read(n))
        return header, self._read(m) if m else b""

    def _read(self, n):
        chunks, left = [], n
        while left:
            chunk = self.r.read(left)
            if not chunk:
                raise EOFError("the judge's parent closed the channel")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


# ---------------------------------------------------------------------------- decoding

def _text(value):
    if type(value) is not str:
        raise BridgeError("a string was expected")
    return value[:MAX_TEXT]


class _Decoder:
    """Tagged plain data from the student's side -> judge objects. Exact types only."""

    def __init__(self, bridge, args=(), slot_values=None):
        self.bridge, self.args, self.slots = bridge, args, slot_values or {}
        self.nodes = 0

    def __call__(self, value, depth=0):
        import torch
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise BridgeError("the value is too large or nested too deeply")
        if type(value) is not tuple or not value or type(value[0]) is not str:
            raise BridgeError("malformed value")
        kind, rest = value[0], value[1:]
        if kind == "none":
            return None
        if kind in ("bool", "int", "float", "str"):
            (v,) = rest
            want = {"bool": bool, "int": int, "float": float, "str": str}[kind]
            if type(v) is not want:
                raise BridgeError(f"a {kind} was expected")
            return _text(v) if kind == "str" else v
        if kind == "complex":
            re_, im = rest
            if type(re_) is not float or type(im) is not float:
                raise BridgeError("a complex number was expected")
            return complex(re_, im)
        if kind == "size":
            (dims,) = rest
            if type(dims) is not list or any(type(d) is not int for d in dims):
                raise BridgeError("a torch.Size was expected")
            return torch.Size(dims)
        if kind == "dtype":
            name = _text(rest[0])
            dtype = getattr(torch, name, None)
            if not isinstance(dtype, torch.dtype):
                raise BridgeError(f"unknown dtype {name!r}")
            return dtype
        if kind == "device":
            return torch.device(_text(rest[0]))
        if kind in ("tuple", "list", "iter"):
            (items,) = rest
            if type(items) is not list:
                raise BridgeError("a sequence was expected")
            out = [self(v, depth + 1) for v in items]
            return tuple(out) if kind == "tuple" else (iter(out) if kind == "iter" else out)
        if kind in ("dict", "odict"):
            (pairs,) = rest
            if type(pairs) is not list:
                raise BridgeError("a mapping was expected")
            out = collections.OrderedDict() if kind == "odict" else {}
            for pair in pairs:
                if type(pair) is not tuple or len(pair) != 2:
                    raise BridgeError("a mapping was expected")
                key = self(pair[0], depth + 1)
                try:
                    hash(key)
                except TypeError:
                    raise BridgeError("a dict key that cannot be hashed") from None
                out[key] = self(pair[1], depth + 1)
            return out
        if kind == "tensor":
            t, requires_grad, grad, slot, device, is_param = rest
            t = _tensor(t)
            if slot is not None:
                if type(slot) is not int or slot not in self.slots:
                    raise BridgeError("malformed differentiable output")
                return self.slots[slot]
            t = t.to(_device(device))
            if type(requires_grad) is not bool:
                raise BridgeError("malformed tensor")
            if requires_grad and (t.is_floating_point() or t.is_complex()):
                t.requires_grad_(True)
            if grad is not None:
                grad = _tensor(grad).to(t.device)
                if grad.shape == t.shape and t.requires_grad:
                    t.grad = grad
            if is_param is True and t.is_floating_point():
                t = torch.nn.Parameter(t, requires_grad=t.requires_grad)
                if grad is not None and grad.shape == t.shape:
                    t.grad = grad
            return t
        if kind == "meta":
            shape, dtype, requires_grad = rest
            if type(shape) is not list or any(type(d) is not int or d < 0 for d in shape) \
                    or type(requires_grad) is not bool:
                raise BridgeError("malformed meta tensor")
            dtype = getattr(torch, _text(dtype), None)
            if not isinstance(dtype, torch.dtype):
                raise BridgeError("unknown dtype")
            t = torch.empty(shape, dtype=dtype, device="meta")
            return t.requires_grad_(True) if requires_grad and t.is_floating_point() else t
        if kind == "ndarray":
            return _tensor(rest[0]).numpy()
        if kind == "packed":
            from torch.nn.utils.rnn import PackedSequence
            fields = [self(v, depth + 1) for v in rest]
            if len(fields) != 4 or not all(f is None or isinstance(f, torch.Tensor)
                                           for f in fields):
                raise BridgeError("malformed PackedSequence")
            return PackedSequence(*fields)
        if kind == "arg":
            (index,) = rest
            if type(index) is not int or not 0 <= index < len(self.args):
                raise BridgeError("malformed argument reference")
            return self.args[index]
        if kind == "handle":
            handle, class_handle, info, is_callable, name = rest
            return self.bridge.proxy(_int(handle), _int(class_handle), info, is_callable is True,
                                     _text(name)[:200])
        if kind == "class":
            handle, info = rest
            return self.bridge.student_class(_int(handle), info)
        raise BridgeError(f"unknown value kind {kind!r}")


def _int(v):
    if type(v) is not int:
        raise BridgeError("malformed handle")
    return v


def _device(name):
    import torch
    device = torch.device(_text(name))
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


def _tensor(t):
    import torch
    if isinstance(t, torch.nn.Parameter):
        t = t.detach()
    if type(t) is not torch.Tensor:
        raise BridgeError(f"a tensor was expected, got {type(t).__name__}")
    if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
        raise BridgeError("only dense CPU tensors cross the bridge")
    return t


def read_reply(data):
    """Unpickle a reply with torch's weights-only loader: plain containers and tensors only."""
    import torch
    if len(data) > MAX_REPLY_BYTES:
        raise BridgeError(f"the reply is {len(data) >> 20} MB, more than the grader reads")
    try:
        reply = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except RecursionError:
        raise BridgeError("the student's code returned a value nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable reply
        raise BridgeError(f"the student's code returned something the grader cannot read "
                          f"(a tensor subclass or another unusual object? {type(exc).__name__})"
                          ) from None
    if type(reply) is not tuple or len(reply) != 3 or type(reply[0]) is not str \
            or type(reply[2]) is not dict:
        raise BridgeError("malformed reply")
    return reply


# ---------------------------------------------------------------------------- proxies

class _StudentClassMeta(type):
    """Metaclass of the judge's stand-in for a student class: calling it builds the object in the
    student's process; attributes are read there (`LSTMRecurrence.apply`); isinstance/issubclass
    work against the torch classes it derives from."""

    _LOCAL = {"__name__", "__qualname__", "__module__", "__mro__", "__bases__", "__dict__",
              "__class__", "__instancecheck__", "__subclasscheck__", "__subclasses__",
              "__repr__", "__doc__", "mro", "_grader_handle", "_grader_bridge",
              "__abstractmethods__", "__init_subclass__", "__subclasshook__", "__flags__",
              "__weakref__", "__basicsize__", "__dictoffset__", "__itemsize__",
              "__text_signature__", "__base__", "__getattribute__", "__setattr__", "__call__",
              "__type_params__", "__orig_bases__", "__parameters__", "__annotations__",
              "_backward_cls", "_is_legacy", "__slots__", "__hash__", "__eq__", "__ne__"}

    def __getattribute__(cls, name):
        if name in _StudentClassMeta._LOCAL or name.startswith("_abc_") or (
                _is_dunder(name) and name not in _DESCRIPTIVE):
            return type.__getattribute__(cls, name)
        bridge = type.__getattribute__(cls, "_grader_bridge")
        return bridge.getattr(type.__getattribute__(cls, "_grader_handle"), name)

    def __call__(cls, *args, **kwargs):
        bridge = type.__getattribute__(cls, "_grader_bridge")
        return bridge.call(type.__getattribute__(cls, "_grader_handle"), None, args, kwargs)

    def __repr__(cls):
        return f"<student class {type.__getattribute__(cls, '__name__')}>"


def _is_dunder(name):
    return len(name) > 4 and name[:2] == name[-2:] == "__"


# Dunder attributes read from the student's side: plain descriptions, never protocol hooks.
# Any other dunder (`__torch_function__`, `__array__`, ...) is the judge's own, so torch and
# Python protocols never run the student's code in place of the test's own operation.
_DESCRIPTIVE = {"__name__", "__qualname__", "__doc__", "__module__", "__defaults__",
                "__kwdefaults__", "__annotations__", "__signature__"}


class RemoteObject:
    """An object that lives in the student's process (an instance, a function, a method)."""

    __slots__ = ("_grader_handle", "_grader_class", "_grader_bridge", "_grader_label", "__weakref__")
    __torch_function__ = None       # set to torch's "no override" below, when torch is loaded

    def __init__(self, bridge, handle, cls, label):
        object.__setattr__(self, "_grader_bridge", bridge)
        object.__setattr__(self, "_grader_handle", handle)
        object.__setattr__(self, "_grader_class", cls)
        object.__setattr__(self, "_grader_label", label)

    @property
    def __class__(self):
        return object.__getattribute__(self, "_grader_class")

    def __getattr__(self, name):
        if name.startswith("_grader_") or (_is_dunder(name) and name not in _DESCRIPTIVE):
            raise AttributeError(name)
        return self._grader_bridge.getattr(self._grader_handle, name)

    def __setattr__(self, name, value):
        self._grader_bridge.setattr(self._grader_handle, name, value)

    def __call__(self, *args, **kwargs):
        return self._grader_bridge.call(self._grader_handle, None, args, kwargs)

    def _method(self, name, *args):
        return self._grader_bridge.call(self._grader_handle, name, args, {})

    def __len__(self):
        return self._method("__len__")

    def __getitem__(self, key):
        return self._method("__getitem__", key)

    def __iter__(self):
        return iter(self._method("__iter__"))

    def __contains__(self, item):
        return self._method("__contains__", item)

    def __bool__(self):
        return True

    def __repr__(self):
        return f"<student {self._grader_label}>"

    __str__ = __repr__

    def __eq__(self, other):
        return self is other

    def __hash__(self):
        return id(self)


def _no_torch_function():
    import torch
    return torch._C._disabled_torch_function_impl


def _safe_base(cls):
    """A trusted class a stand-in may derive from: a plain class (nn.Module, an exception), or
    an autograd Function; never a tensor type, whose C code reads the stand-in's attributes."""
    import torch
    if issubclass(cls, torch.Tensor) or issubclass(type(cls), torch._C._TensorMeta):
        return False
    return type(cls) is type or issubclass(cls, torch.autograd.Function)


def _trusted_class(qualified):
    """The judge's own class for a 'module.qualname' string, if it is torch's or a builtin."""
    module, _, qualname = qualified.rpartition(".")
    # The qualname may itself be dotted (torch.nn.modules.rnn.LSTM -> module torch.nn.modules.rnn)
    for cut in range(len(qualified.split(".")) - 1, 0, -1):
        parts = qualified.split(".")
        module, names = ".".join(parts[:cut]), parts[cut:]
        if module == "builtins" or module == "torch" or module.startswith("torch."):
            mod = sys.modules.get(module)
            if mod is None:
                continue
            obj = mod
            for n in names:
                if n == "<locals>":
                    return None
                obj = getattr(obj, n, None)
            return obj if isinstance(obj, type) and obj is not object else None
    return None


# ---------------------------------------------------------------------------- the bridge

class Bridge:
    """The judge's end: sends requests to the student's side and decodes the replies."""

    def __init__(self, channel):
        self.channel = channel
        self.proxies = {}          # handle -> RemoteObject
        self.classes = {}          # class handle -> judge class standing in for it
        self.streams = None        # where the student's prints during a call go
        self.namespace = None      # the judge's globals (for _IN_PLACE)
        RemoteObject.__torch_function__ = _no_torch_function()

    # -- transport
    def request(self, req):
        """Send one request; return (kind, payload, extra) of the reply: kind is "ok" or
        "raise" (the student's code raised; payload describes the exception)."""
        self.channel.send({"op": "request"}, pickle.dumps(req, protocol=4))
        header, blob = self.channel.recv()
        if header.get("op") != "reply":
            raise BridgeError("the grader's protocol is out of step")
        for name, text in header.get("streams", []):
            if self.streams is not None and type(name) is str and type(text) is str:
                self.streams.write_stream(name, text)
        status = header.get("status")
        if status == "timeout":
            raise CellTimeoutError(header.get("message") or
                                   "the student's code ran too long and was stopped")
        if status != "ok":
            raise BridgeError(header.get("message") or "the student's kernel did not answer")
        kind, payload, extra = read_reply(blob)
        if kind == "error":
            raise BridgeError(f"the student's side failed: {_text(payload)}")
        if kind not in ("ok", "raise"):
            raise BridgeError("malformed reply")
        return kind, payload, extra

    def simple(self, req):
        """A request whose student exception is simply raised here."""
        kind, payload, extra = self.request(req)
        if kind == "raise":
            raise _student_exception(payload)
        return payload, extra

    # -- proxies
    def proxy(self, handle, class_handle, info, is_callable, name=""):
        if handle not in self.proxies:
            cls = self.student_class(class_handle, info)
            label = name if is_callable and name else \
                f"{type.__getattribute__(cls, '__name__')} object"
            self.proxies[handle] = RemoteObject(self, handle, cls, label)
        return self.proxies[handle]

    def student_class(self, handle, info):
        if handle in self.classes:
            return self.classes[handle]
        if type(info) is not dict:
            raise BridgeError("malformed class")
        name = _text(info.get("name", "object"))[:200]
        if not name.isidentifier():
            name = "StudentClass"
        mro = info.get("mro", [])
        if type(mro) is not list:
            raise BridgeError("malformed class")
        base = None
        for qualified in mro[1:] if mro else []:
            cls = _trusted_class(_text(qualified))
            if cls is not None:
                base = cls
                break
        if mro and _trusted_class(_text(mro[0])) is not None:
            base = _trusted_class(mro[0])     # the object's class is torch's own (an nn.LSTM)
        if base is not None and not _safe_base(base):
            base = None                       # tensors cross as data, never as stand-ins
        bases = (base,) if base is not None else ()
        meta = _StudentClassMeta
        if base is not None and type(base) is not type:
            meta = type("_StudentClassMeta", (_StudentClassMeta, type(base)), {})
        body = {"__module__": "student", "_grader_handle": handle, "_grader_bridge": self,
                "__torch_function__": _no_torch_function()}
        try:
            cls = meta(name, bases, dict(body))
        except TypeError:  # a base that cannot be subclassed
            cls = _StudentClassMeta(name, (), dict(body))
        self.classes[handle] = cls
        return cls

    # -- operations
    def lookup(self, names):
        payload, _ = self.simple({"op": "lookup", "names": sorted(names)})
        if type(payload) is not tuple or payload[:1] != ("names",):
            raise BridgeError("malformed lookup reply")
        found = {}
        decode = _Decoder(self)
        for name, value in payload[1].items():
            if type(name) is not str or name not in names:
                continue
            if (type(value) is tuple and value[:1] == ("handle",) and len(value) > 3
                    and type(value[3]) is dict and value[3].get("mro", [None])[:1] == ["builtins.module"]):
                continue    # a module the student imported: tests use the judge's own imports
            found[name] = decode(value)
        return found

    def getattr(self, handle, name):
        payload, _ = self.simple({"op": "getattr", "target": ("handle", handle), "name": name})
        return _Decoder(self)(payload)

    def setattr(self, handle, name, value):
        enc = _Encoder(self)
        self.simple({"op": "setattr", "target": ("handle", handle), "name": name,
                     "value": enc(value)})

    def release(self):
        """Forget the graphs of earlier calls (a new grade cell starts)."""
        self.simple({"op": "release"})

    def call(self, handle, method, args, kwargs):
        import torch
        with torch._C.DisableTorchFunction():
            enc = _Encoder(self)
            req = {"op": "call", "target": ("handle", handle), "method": method,
                   "args": enc(tuple(args)), "kwargs": enc(dict(kwargs)),
                   "rng": torch.get_rng_state(), "grad": torch.is_grad_enabled(),
                   "guard": _active_guard_pattern(), "guard_sources": _active_guard_sources()}
        kind, payload, extra = self.request(req)
        self._advance_rng(req["rng"], extra.get("rng") if type(extra) is dict else None)
        used = extra.get("used") or []
        if used:
            names = sorted({_text(u) for u in used if type(u) is str})
            for mode in _active_guards():
                mode.used.update(names)
        if kind == "raise":
            exc = _student_exception(payload)
            if not str(exc):
                label = self._label(handle, method)
                exc.args = (f"raised by {label}" + (" (not written yet?)" if isinstance(
                    exc, NotImplementedError) else ""),)
            raise exc
        with torch._C.DisableTorchFunction():
            label = self._label(handle, method)
            if label.rpartition(".")[2] in self._in_place():
                self._apply_changes(enc.originals, extra.get("changes"))
            else:
                self._refuse_changes(label, enc.originals, extra.get("changes"))
            slot_values = self._differentiable(payload, extra.get("call"), enc.inputs)
            return _Decoder(self, [o for o, _ in enc.originals], slot_values)(payload)

    def _advance_rng(self, before, after):
        """Move the judge's generator on after a call that drew random numbers, as the student's
        code moved its own, but to a state derived from the judge's alone: a reply never chooses
        the data a test draws next, and two calls in a row (two new models) still see different
        random numbers. A call that drew none leaves the judge's state as it was."""
        import hashlib
        import torch
        try:
            if isinstance(after, torch.Tensor) and torch.equal(_tensor(after), before):
                return
        except (BridgeError, RuntimeError, TypeError):
            pass
        self.calls = getattr(self, "calls", 0) + 1
        digest = hashlib.sha256(before.numpy().tobytes() + self.calls.to_bytes(8, "little")).digest()
        torch.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

    def _label(self, handle, method):
        proxy = self.proxies.get(handle)
        cls = self.classes.get(handle)
        name = (type.__getattribute__(cls, "__name__") if cls is not None
                else (object.__getattribute__(proxy, "_grader_label") if proxy is not None
                      else "the student's code"))
        return f"{name}.{method}" if method else name

    def _differentiable(self, payload, call_id, inputs):
        """{slot: judge tensor} for the outputs that carry a remote graph."""
        import torch
        found = {}

        def scan(v, depth=0):
            if depth > MAX_DEPTH or type(v) is not tuple or not v:
                return
            if v[0] == "tensor" and len(v) == 7 and type(v[4]) is int:
                found[v[4]] = _tensor(v[1])
            elif v[0] in ("tuple", "list", "iter") and len(v) == 2 and type(v[1]) is list:
                for x in v[1]:
                    scan(x, depth + 1)
            elif v[0] in ("dict", "odict") and len(v) == 2 and type(v[1]) is list:
                for pair in v[1]:
                    if type(pair) is tuple and len(pair) == 2:
                        scan(pair[1], depth + 1)
            elif v[0] == "packed":
                for x in v[1:]:
                    scan(x, depth + 1)
        scan(payload)
        if not found:
            return {}
        if type(call_id) is not int or not torch.is_grad_enabled():
            return {k: t for k, t in found.items()}
        order = sorted(found)
        if order != list(range(len(order))):
            raise BridgeError("malformed differentiable outputs")
        outs = [found[k] for k in order]
        for t in outs:
            if not (t.is_floating_point() or t.is_complex()):
                raise BridgeError("an integer tensor cannot carry gradients")
        info = _CallInfo(self, call_id, outs, inputs)
        dummy = torch.zeros((), requires_grad=True)
        results = _RemoteGraph.apply(info, dummy, *[t for t in inputs])
        return dict(zip(order, results))

    def backward(self, call_id, grads, inputs):
        import torch
        payload, _ = self.simple({"op": "backward", "call": call_id,
                                   "grads": [None if g is None else g.detach().to("cpu")
                                             for g in grads]})
        if type(payload) is not tuple or payload[:1] != ("grads",) or type(payload[1]) is not dict:
            raise BridgeError("malformed gradients")
        out = []
        for slot, target in enumerate(inputs):
            g = payload[1].get(slot)
            if g is None:
                out.append(None)
                continue
            g = _tensor(g).to(target.device)
            if g.shape != target.shape or g.dtype != target.dtype:
                raise BridgeError(f"a gradient of shape {tuple(g.shape)} came back for an input "
                                  f"of shape {tuple(target.shape)}")
            out.append(g)
        return out

    def _in_place(self):
        """Names of the functions whose contract changes their arguments (a test-helpers cell's
        _IN_PLACE): only their changes reach the test's objects."""
        names = self.namespace.get("_IN_PLACE", ()) if self.namespace is not None else ()
        return {n for n in names if type(n) is str} if isinstance(names, (set, frozenset, tuple, list)) else set()

    def _refuse_changes(self, label, originals, changes):
        """Any other call works on copies: its changes stay in the student's process. A tensor
        argument whose values it changed is a broken contract, said as such."""
        if type(changes) is not list or len(changes) != len(originals):
            return
        import torch
        for (obj, _), change in zip(originals, changes):
            if (isinstance(obj, torch.Tensor) and type(change) is tuple and len(change) == 3
                    and change[0] == "tensor" and change[1] is not None):
                raise AssertionError(f"{label} changed a tensor it was given in place: build new "
                                     f"tensors instead (no add_, mul_, +=, [...] = on an argument)")

    def _apply_changes(self, originals, changes):
        """Copy back what the call changed in the test's own arguments."""
        import torch
        if type(changes) is not list or len(changes) != len(originals):
            return
        for (obj, _), change in zip(originals, changes):
            if type(change) is not tuple or not change:
                continue
            if change[0] == "tensor" and isinstance(obj, torch.Tensor) and len(change) == 3:
                _, data, grad = change
                if data is not None:
                    data = _tensor(data)
                    if data.shape == obj.shape and data.dtype == obj.dtype:
                        with torch.no_grad():
                            obj.copy_(data)
                if grad is None and obj.is_leaf:
                    obj.grad = None
                elif isinstance(grad, torch.Tensor) and obj.is_leaf:
                    grad = _tensor(grad)
                    if grad.shape == obj.shape:
                        obj.grad = grad.to(obj.device, obj.dtype)
            elif change[0] == "module" and isinstance(obj, torch.nn.Module) and len(change) == 4:
                _, state, grads, training = change
                if type(state) is dict and state:
                    current = obj.state_dict()
                    with torch.no_grad():
                        for k, v in state.items():
                            if type(k) is str and k in current:
                                v = _tensor(v)
                                if v.shape == current[k].shape:
                                    current[k].copy_(v)
                if type(grads) is dict:
                    params = dict(obj.named_parameters())
                    for k, g in grads.items():
                        if type(k) is str and k in params:
                            if g is None:
                                params[k].grad = None
                            else:
                                g = _tensor(g)
                                if g.shape == params[k].shape:
                                    params[k].grad = g.to(params[k].device, params[k].dtype)
                if type(training) is bool:
                    obj.train(training)


class _CallInfo:
    def __init__(self, bridge, call_id, outs, inputs):
        self.bridge, self.call_id, self.outs, self.inputs = bridge, call_id, outs, inputs


def _remote_graph_class():
    import torch

    class _RemoteGraph(torch.autograd.Function):
        """Outputs computed in the student's process; backward asks that process for the
        gradients of the test's inputs (its own parameters get theirs there)."""

        @staticmethod
        def forward(ctx, info, dummy, *inputs):
            ctx.info = info
            ctx.set_materialize_grads(False)
            return tuple(t.clone() for t in info.outs)

        @staticmethod
        def backward(ctx, *grads):
            info = ctx.info
            got = info.bridge.backward(info.call_id, grads, info.inputs)
            return (None, None, *got)
    return _RemoteGraph


class _LazyRemoteGraph:
    cls = None

    def apply(self, *args):
        if _LazyRemoteGraph.cls is None:
            _LazyRemoteGraph.cls = _remote_graph_class()
        out = _LazyRemoteGraph.cls.apply(*args)
        return out if isinstance(out, tuple) else (out,)


_RemoteGraph = _LazyRemoteGraph()


class _Encoder:
    """Judge objects -> placeholders the student's side rebuilds (trusted direction: pickle).
    Records the test's own tensors and modules in order, to copy changes back and to route
    gradients."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.originals = []      # (object, kind) in the order the student's side rebuilds them
        self.inputs = []         # judge tensors that require grad, by slot

    def __call__(self, value, depth=0):
        import torch
        from torch.nn.utils.rnn import PackedSequence
        if depth > MAX_DEPTH:
            raise BridgeError("an argument is nested too deeply")
        if isinstance(value, RemoteObject):
            return ("handle", object.__getattribute__(value, "_grader_handle"))
        if isinstance(value, type) and isinstance(value, _StudentClassMeta):
            return ("handle", type.__getattribute__(value, "_grader_handle"))
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            self.originals.append((value, "meta"))
            return ("meta", list(value.shape), str(value.dtype).replace("torch.", ""),
                    bool(value.requires_grad))
        if isinstance(value, torch.Tensor):
            slot = None
            if value.requires_grad:
                slot = len(self.inputs)
                self.inputs.append(value)
            grad = value.grad if value.is_leaf else None
            self.originals.append((value, "tensor"))
            return ("tensor", value.detach().to("cpu").clone(), bool(value.requires_grad),
                    None if grad is None else grad.detach().to("cpu").clone(), slot,
                    str(value.device))
        if isinstance(value, torch.nn.Module):
            grads, slots = {}, {}
            for name, p in value.named_parameters():
                if p.grad is not None:
                    grads[name] = p.grad.detach().clone()
                if p.requires_grad:
                    slots[name] = len(self.inputs)
                    self.inputs.append(p)
            buf = io.BytesIO()
            try:
                torch.save(value, buf)
            except Exception as exc:  # noqa: BLE001
                raise BridgeError(f"the test passed a module that cannot be copied to the "
                                  f"student's process ({type(exc).__name__})") from None
            self.originals.append((value, "module"))
            return ("module", buf.getvalue(), grads, slots)
        if isinstance(value, PackedSequence):
            return ("packed", [None if v is None else self(v, depth + 1) for v in value])
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return ("tuple", [self(v, depth + 1) for v in value])
        if isinstance(value, list):
            return ("list", [self(v, depth + 1) for v in value])
        if isinstance(value, collections.OrderedDict):
            return ("odict", [(k, self(v, depth + 1)) for k, v in value.items()])
        if isinstance(value, dict):
            return ("dict", [(k, self(v, depth + 1)) for k, v in value.items()])
        if hasattr(value, "__next__") or type(value).__name__ == "generator":
            return ("list", [self(v, depth + 1) for v in list(value)])
        try:
            pickle.dumps(value, protocol=4)
        except Exception:  # noqa: BLE001
            raise BridgeError(f"a {type(value).__name__} cannot be passed to the student's "
                              f"code by the grader") from None
        return ("value", value)


def _active_guards():
    """Torch function modes on the judge's stack that declare FORBIDDEN and used (the course's
    _NoBuiltinRNN): the bridge carries their rule into the student's process."""
    import torch
    modes = []
    try:
        n = torch._C._len_torch_function_stack()
        stack = [torch._C._get_function_stack_at(i) for i in range(n)]
    except (AttributeError, RuntimeError):
        return modes
    for mode in stack:
        if hasattr(mode, "FORBIDDEN") and isinstance(getattr(mode, "used", None), set):
            modes.append(mode)
    return modes


def _active_guard_pattern():
    patterns = []
    for mode in _active_guards():
        forbidden = mode.FORBIDDEN
        if isinstance(forbidden, re.Pattern):
            patterns.append(forbidden.pattern)
        elif isinstance(forbidden, (set, frozenset, list, tuple)):
            patterns.append("^(" + "|".join(re.escape(str(n)) for n in forbidden) + ")$")
    return "|".join(f"(?:{p})" for p in patterns) or None


def _active_guard_sources():
    """File-name suffixes (FORBIDDEN_SOURCES) of the active guards: torch code the student's
    code must not run (02: torch/nn/utils/clip_grad.py)."""
    sources = []
    for mode in _active_guards():
        found = getattr(mode, "FORBIDDEN_SOURCES", ())
        if isinstance(found, (list, tuple)):
            sources += [s for s in found if isinstance(s, str) and s]
    return tuple(sources)


def _student_exception(payload):
    """The student's exception as the nearest built-in type, with its message."""
    if type(payload) is not dict:
        return BridgeError("malformed exception")
    mro = payload.get("mro") if type(payload.get("mro")) is list else []
    name = _text(payload.get("name", "Exception"))[:100]
    message = _text(payload.get("message", ""))
    base = None
    for qualified in mro:
        if type(qualified) is str and qualified.startswith("builtins."):
            cls = getattr(builtins, qualified[len("builtins."):], None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                base = cls
                break
            if isinstance(cls, type) and issubclass(cls, BaseException):
                base = RuntimeError      # KeyboardInterrupt, SystemExit in student code
                message = f"{name}: {message}" if message else name
                break
    base = base or RuntimeError
    if base.__name__ == name or not name.isidentifier():
        return base(message)
    cls = type(name, (base,), {"__module__": "student"})
    return cls(message)


# ---------------------------------------------------------------------------- running cells

def global_reads(source):
    """(names the cell's code reads from globals at any depth, names it binds at module level)."""
    table = symtable.symtable(source, "<cell>", "exec")
    reads, binds = set(), set()

    def walk(t):
        module = t.get_type() == "module"
        for s in t.get_symbols():
            name = s.get_name()
            if module:
                if s.is_assigned() or s.is_imported() or s.is_namespace():
                    binds.add(name)
                if s.is_referenced():
                    reads.add(name)
            elif s.is_global() or (t.get_type() == "class" and s.is_referenced()
                                   and not s.is_assigned() and not s.is_free()):
                reads.add(name)
        for child in t.get_children():
            walk(child)
    walk(table)
    return reads, binds


class _Capture(io.TextIOBase):
    """sys.stdout / sys.stderr for a cell: keeps (name, text) in order, bounded."""

    def __init__(self, outputs, name, limit):
        self.outputs, self.name, self.limit = outputs, name, limit

    def writable(self):
        return True

    def write(self, text):
        self.write_stream(self.name, str(text))
        return len(text)

    def write_stream(self, name, text):
        if name not in ("stdout", "stderr"):
            return
        total = sum(len(t) for _, t in self.outputs)
        if total >= self.limit:
            return
        text = text[: self.limit - total]
        if self.outputs and self.outputs[-1][0] == name:
            self.outputs[-1] = (name, self.outputs[-1][1] + text)
        else:
            self.outputs.append((name, text))


class Judge:
    def __init__(self, channel):
        self.channel = channel
        self.bridge = Bridge(channel)
        self.ns = {"__name__": "__main__", "__builtins__": builtins}
        self.bridge.namespace = self.ns
        self.trusted_reads = set()
        self.student_names = set()
        self.failed_setup = None

    def run_trusted(self, sources):
        """The setup and test-helpers cells (no student name is bound while they run)."""
        for label, source in sources:
            reads, _ = global_reads(source)
            self.trusted_reads |= reads
            outputs = []
            try:
                self._exec(source, f"<{label}>", outputs)
            except BaseException as exc:  # noqa: BLE001
                self.failed_setup = f"the {label} cell failed in the grader: {type(exc).__name__}: {exc}"
                return

    def _exec(self, source, filename, outputs):
        out = _Capture(outputs, "stdout", MAX_TEXT)
        err = _Capture(outputs, "stderr", MAX_TEXT)
        code = compile(source, filename, "exec")
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        self.bridge.streams = out
        try:
            with warnings.catch_warnings():
                exec(code, self.ns)
        finally:
            sys.stdout, sys.stderr = old
            self.bridge.streams = None

    def run_cell(self, source):
        outputs, error = [], None
        if self.failed_setup:
            return [], ("GradingError", self.failed_setup)
        try:
            reads, binds = global_reads(source)
        except SyntaxError as exc:
            return [], ("SyntaxError", str(exc))
        for name in self.student_names:
            self.ns.pop(name, None)
        try:
            self.bridge.release()
        except BaseException as exc:  # noqa: BLE001
            return [], ("GradingError", f"the student's kernel did not answer: "
                                        f"{type(exc).__name__}: {exc}")
        wanted = ((reads | self.trusted_reads) - binds - set(self.ns) - set(dir(builtins)))
        try:
            found = self.bridge.lookup(wanted) if wanted else {}
        except BaseException as exc:  # noqa: BLE001
            return [], ("GradingError", f"the student's names could not be read: "
                                        f"{type(exc).__name__}: {exc}")
        self.ns.update(found)
        self.student_names = set(found)
        try:
            self._exec(source, "<test cell>", outputs)
        except BaseException as exc:  # noqa: BLE001 - the verdict: this cell failed
            error = (type(exc).__name__, _message(exc))
        return outputs, error


def _message(exc):
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = ""
    if not text and isinstance(exc, AssertionError):
        # A bare assert: say where, without quoting the test's code.
        tb = traceback.extract_tb(exc.__traceback__)
        lines = [f.lineno for f in tb if f.filename == "<test cell>"]
        if lines:
            text = f"a check failed at line {lines[-1]} of this test cell"
    return text[:MAX_TEXT]


def main():
    # Our protocol owns the real stdout; stray prints (C libraries too) go to stderr's sink.
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    channel = Channel(sys.stdin.buffer, proto_out)
    judge = Judge(channel)
    while True:
        try:
            header, blob = channel.recv()
        except EOFError:
            return 0
        op = header.get("op")
        if op == "init":
            os.environ.update({k: str(v) for k, v in header.get("env", {}).items()})
            judge.run_trusted([(label, src) for label, src in header.get("sources", [])])
            channel.send({"op": "ready", "error": judge.failed_setup})
        elif op == "cell":
            outputs, error = judge.run_cell(header["source"])
            channel.send({"op": "done", "outputs": outputs, "error": error})
        elif op == "exit":
            return 0


if __name__ == "__main__":
    sys.exit(main())
