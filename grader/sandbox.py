"""nbgrader plumbing for grading untrusted notebooks: a sandboxed kernel and guarded hidden tests.

Loaded by grader/grading_config.py inside the nbgrader process (never by notebooks).

- SandboxKernelManager starts the kernel through grader/kernel_launcher.py (memory, file size and
  process caps, no network, a new HOME and PID namespace, unprivileged user) and uses the ipc
  transport so that a kernel without a network still talks to nbgrader.
- GuardedExecute is nbgrader's Execute preprocessor plus a guard. At kernel start, before any
  student code runs, it stashes pristine references (torch, numpy, math, operator, builtins, the
  classes of torch.nn, the IPython shell) under a per-run random name. Right before each grade cell
  it puts them all back, drops any torch function/dispatch mode the student left active, clears
  trace/profile hooks and IPython input/AST transformers, and rebinds the names the instructor's
  locked cells bound to library objects (`torch`, `nn`, `F`, `assert_close` ...) and to `_helpers`.
  A submission that monkeypatches torch.allclose or builtins to pass therefore meets the real ones
  in the hidden tests, whatever the notebook author wrote. If the guard itself cannot run, the
  grade cell is not run and scores 0 with a message.
- Outputs are capped per cell so a submission that prints gigabytes cannot bloat the feedback.
"""
import os
import secrets
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from nbformat.notebooknode import NotebookNode
from traitlets import Integer, default

from nbgrader.preprocessors import Execute

LAUNCHER = Path(__file__).resolve().parent / "kernel_launcher.py"


class SandboxKernelManager(AsyncKernelManager):
    @default("transport")
    def _sandbox_transport(self):
        return "ipc" if os.environ.get("GRADER_NO_NETWORK") == "1" else "tcp"

    def write_connection_file(self, **kwargs):
        # ipc sockets are files named after `ip`; its default ("kernel-ipc") is relative, and
        # nbgrader and the kernel run in different folders. Make it absolute, in the runtime dir.
        if self.transport == "ipc" and not os.path.isabs(self.ip or ""):
            from jupyter_core.paths import jupyter_runtime_dir
            self.ip = os.path.join(jupyter_runtime_dir(), f"kernel-{secrets.token_hex(6)}-ipc")
        return super().write_connection_file(**kwargs)

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        return [cmd[0], str(LAUNCHER), *cmd]


# Runs once per kernel, before any notebook cell. {token} is random per run.
STASH = r'''
def _grader_build_guard():
    import builtins, sys, types, math, operator, functools, threading, importlib
    try:
        import torch, torch.nn, torch.nn.functional, torch.testing, torch.overrides
        import torch.utils._python_dispatch
    except ImportError:
        torch = None
    try:
        import numpy, numpy.testing
    except ImportError:
        numpy = None
    from IPython import get_ipython
    shell = get_ipython()
    roots = ("torch", "numpy", "builtins", "math", "operator", "functools", "IPython", "ipykernel",
             "unittest")
    modules = {n: m for n, m in list(sys.modules.items())
               if isinstance(m, types.ModuleType) and n.split(".")[0] in roots}
    def keep(v):
        return callable(v) or isinstance(v, types.ModuleType)
    mod_state = [(m, m.__dict__, {k: v for k, v in list(m.__dict__.items()) if keep(v)})
                 for m in modules.values()]
    class_roots = ("torch.nn", "torch.overrides", "torch.testing", "torch._tensor",
                   "torch.utils._python_dispatch", "IPython.core", "ipykernel")
    classes = {}
    for m in modules.values():
        for v in list(m.__dict__.values()):
            if (isinstance(v, type) and isinstance(getattr(v, "__module__", None), str)
                    and v.__module__.startswith(class_roots)):
                classes[id(v)] = v
    if torch is not None:
        for c in (torch.Tensor, torch.nn.Parameter):
            classes[id(c)] = c
    class_state = [(c, dict(c.__dict__)) for c in classes.values()]
    pristine_ids = {id(v) for _, _, d in mod_state for v in d.values()}
    pristine_ids.update(id(m) for m in modules.values())
    shell_state = dict(shell.__dict__)
    lists = {n: list(getattr(shell, n)) for n in ("input_transformers_cleanup",
             "input_transformers_post", "ast_transformers") if hasattr(shell, n)}
    events = {k: list(v) for k, v in shell.events.callbacks.items()}
    recorded = {}
    set_attr, del_attr = type.__setattr__, type.__delattr__
    real_sys_modules = dict(modules)
    stdout, stderr = sys.stdout, sys.stderr
    def restore():
        for n, m in real_sys_modules.items():
            if sys.modules.get(n) is not m:
                sys.modules[n] = m
        for m, d, snap in mod_state:
            for k, v in snap.items():
                if d.get(k) is not v:
                    d[k] = v
        for c, snap in class_state:
            d = c.__dict__
            for k in [k for k in d if k not in snap]:
                try:
                    del_attr(c, k)
                except (AttributeError, TypeError):
                    pass
            for k, v in snap.items():
                if d.get(k) is not v:
                    try:
                        set_attr(c, k, v)
                    except (AttributeError, TypeError):
                        pass
        if torch is not None:
            while torch._C._len_torch_function_stack() > 0:
                torch._C._pop_torch_function_stack()
            try:
                while torch._C._len_torch_dispatch_stack() > 0:
                    torch.utils._python_dispatch._pop_mode()
            except Exception:
                pass
        sys.settrace(None)
        sys.setprofile(None)
        threading.settrace(None)
        threading.setprofile(None)
        sys.stdout, sys.stderr = stdout, stderr
        d = shell.__dict__
        for k in [k for k in d if k not in shell_state and callable(d[k])]:
            del d[k]
        for k, v in shell_state.items():
            if callable(v) and d.get(k) is not v:
                d[k] = v
        for n, items in lists.items():
            getattr(shell, n)[:] = items
        for k, v in events.items():
            shell.events.callbacks[k][:] = v
        shell.custom_exceptions = ()
        ns = shell.user_ns
        for k, v in recorded.items():
            if ns.get(k) is not v:
                ns[k] = v
        # A student's global `all = lambda *a: True` would shadow the builtin inside the tests:
        # set such globals aside while the grade cell runs (put back afterwards).
        for k in [k for k in ns if k in builtin_names and k not in recorded]:
            shadowed[k] = ns.pop(k)
    ipython_names = {"_", "__", "___", "_ih", "_oh", "_dh", "_ii", "_iii"}
    def record(before):
        # Names an instructor cell bound to a library object or to an _underscored helper.
        ns = shell.user_ns
        for k, v in list(ns.items()):
            if before.get(k) is v or k in ipython_names or k.startswith("_i") and k[2:].isdigit():
                continue
            helper = (k.startswith("_") and not k.startswith("__")
                      and isinstance(v, (types.FunctionType, type)))
            if id(v) in pristine_ids or helper:
                recorded[k] = v
    builtin_names = set(builtins.__dict__)
    shadowed = {}
    state = {}
    def guard(action):
        if action == "restore":
            restore()
        elif action == "snapshot":
            state["before"] = dict(shell.user_ns)
        elif action == "record":
            record(state.pop("before", {}))
        elif action == "after":
            shell.user_ns.update(shadowed)
            shadowed.clear()
    return guard

import builtins as _grader_b
setattr(_grader_b, "_grader_{token}", _grader_build_guard())
del _grader_b, _grader_build_guard
'''

RESTORE = "_grader_{token}('restore')"
SNAPSHOT = "_grader_{token}('snapshot')"
RECORD = "_grader_{token}('record')"
AFTER = "_grader_{token}('after')"


def _is_grade(cell):
    meta = cell.metadata.get("nbgrader", {})
    return bool(meta.get("grade")) and not meta.get("solution")


def _is_instructor(cell):
    meta = cell.metadata.get("nbgrader", {})
    return bool(meta.get("locked")) and not meta.get("solution") and not meta.get("grade")


class GuardedExecute(Execute):
    """nbgrader's Execute with a sandboxed kernel and hidden tests immune to monkeypatching."""

    max_output_chars = Integer(200_000, help="characters kept per cell output").tag(config=True)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("kernel_manager_class", SandboxKernelManager)
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        self._guard_token = secrets.token_hex(12)
        self._guarded_kc = None
        path = (resources or {}).get("metadata", {}).get("path")
        if path and os.geteuid() == 0:
            # The kernel runs as an unprivileged user (kernel_launcher.py): let it write its own
            # folder, and only that.
            try:
                import pwd
                entry = pwd.getpwnam(os.environ.get("GRADER_USER", "nobody"))
                os.chown(path, entry.pw_uid, entry.pw_gid)
            except (KeyError, OSError):
                pass
        return super().preprocess(nb, resources, km)

    def _hidden(self, source, index):
        """Run code in the kernel outside the notebook; return None or an error text."""
        cell = NotebookNode(cell_type="code", source=source.replace("{token}", self._guard_token),
                            metadata=NotebookNode(), outputs=[], execution_count=None,
                            id=f"grader-guard-{index}")
        real = self.nb.cells[index]
        try:
            self.execute_cell(cell, index, store_history=False)
        except Exception as exc:  # noqa: BLE001 - any failure means the guard did not run
            return f"{type(exc).__name__}: {exc}"
        finally:
            self.nb.cells[index] = real  # nbclient stores the executed cell at `index`
        for out in cell.outputs:
            if out.output_type == "error":
                return f"{out.ename}: {out.evalue}"
        return None

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return super().preprocess_cell(cell, resources, index)
        if self._guarded_kc is not self.kc:
            # A fresh kernel (first cell, or nbgrader restarted it): stash before student code.
            self._guard_error = self._hidden(STASH, index)
            self._guarded_kc = self.kc
        if _is_grade(cell):
            problem = self._guard_error or self._hidden(RESTORE, index)
            if problem:
                cell.outputs = [NotebookNode(
                    output_type="error", ename="GradingGuardError", evalue=problem,
                    traceback=[f"GradingGuardError: the grader could not restore a clean "
                               f"environment before this test cell ({problem}); not run."])]
                return cell, resources
        instructor = _is_instructor(cell)
        if instructor:
            self._hidden(SNAPSHOT, index)
        cell, resources = super().preprocess_cell(cell, resources, index)
        if instructor:
            self._hidden(RECORD, index)
        if _is_grade(cell):
            self._hidden(AFTER, index)
        self._cap_outputs(cell)
        return cell, resources

    def _cap_outputs(self, cell):
        limit = self.max_output_chars
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and len(out.text) > limit:
                out.text = out.text[:limit] + f"\n... output truncated by the grader ({len(out.text)} characters) ...\n"
            elif out.output_type in ("display_data", "execute_result"):
                for mime, value in list(out.get("data", {}).items()):
                    if isinstance(value, str) and len(value) > 5 * limit:
                        out.data[mime] = (value[:limit] + " ... truncated by the grader"
                                          if mime.startswith("text/") else "")


from nbgrader import utils as _nbutils  # noqa: E402
from nbgrader.preprocessors import OverwriteCells  # noqa: E402


class RestoringOverwriteCells(OverwriteCells):
    """OverwriteCells whose add_missing_cells works wherever the deleted test cell sat.

    nbgrader 0.9.6 puts a deleted grade cell back after the source cell just before it and
    raises KeyError when that one is not a solution or grade cell (a markdown cell, say). Here it
    goes after the nearest earlier source cell still present (any cell with a grade id), or first.
    """

    def add_missing_grade_cells(self, nb, resources):
        source_nb = self.gradebook.find_notebook(self.notebook_id, self.assignment_id)
        source_cells = source_nb.source_cells
        order = [cell.name for cell in source_cells]
        solution_ids = {cell.name for cell in source_nb.solution_cells}
        for grade_cell in source_nb.grade_cells:
            present = {c.metadata.get("nbgrader", {}).get("grade_id"): i
                       for i, c in enumerate(nb.cells) if _nbutils.is_grade(c)
                       or _nbutils.is_solution(c) or _nbutils.is_locked(c)}
            if grade_cell.name in present:
                continue
            self.log.warning("Missing grade cell %s encountered, adding to notebook", grade_cell.name)
            pos = order.index(grade_cell.name)
            cell = self.missing_cell_transform(source_cells[pos], grade_cell.max_score,
                                               is_solution=grade_cell.name in solution_ids)
            where = 0
            for earlier in reversed(order[:pos]):
                if earlier in present:
                    where = present[earlier] + 1
                    break
            nb.cells.insert(where, cell)
        return nb, resources
