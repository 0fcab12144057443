"""nbgrader's Execute, with every verdict decided outside the student's process.

JudgedExecute replaces nbgrader's Execute preprocessor (grader/grading_config.py for
`grader grade`; `grader check` uses it directly). The student's notebook runs in its kernel as
usual, except its grade cells: those run in the judge (grader/judge.py), a separate process that
executes the SOURCE notebook's setup, test-helpers and grade cells, and reaches the student's
functions through a bridge (grader/student_side.py, installed in the kernel before any student
cell). The grade cell's outputs in the graded notebook are the judge's: its prints, and on
failure one error whose text is the failing check's message (never the test's code). nbgrader
then scores the cell from those outputs exactly as it always does.

Also here, because they are about executing untrusted notebooks:
- grade cells are moved, if needed, after every cell that precedes them in the source notebook,
  so that an honest student who moved an answer below its tests is graded as if they had not;
- outputs are capped per output, per cell and per notebook (count and size);
- the kernel's messages are capped in size on the wire (a 1 GB print never reaches memory);
- a kernel that dies or stops answering costs the rest of its own notebook, nothing else.
"""
import base64
import json
import os
import secrets
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

from nbclient.util import run_sync
from nbformat.notebooknode import NotebookNode
from traitlets import Bool, Integer, List, Unicode

from nbgrader.preprocessors import Execute

from . import student_side

ROOT = Path(__file__).resolve().parent.parent
STUDENT_SIDE = Path(student_side.__file__).read_text()


def _meta(cell):
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_grade(cell):
    return cell.get("cell_type") == "code" and bool(_meta(cell).get("grade")) \
        and not _meta(cell).get("solution")


def grade_id(cell):
    return _meta(cell).get("grade_id")


def trusted_cells(source_nb):
    """From the SOURCE notebook: ([(label, source)] for setup + test-helpers, {grade id: source},
    [grade ids of all nbgrader cells in order])."""
    trusted, grade, order = [], {}, []
    for cell in source_nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "code" and "setup" in tags:
            trusted.append(("setup", cell.source))
        elif cell.cell_type == "code" and "test-helpers" in tags:
            trusted.append(("test-helpers", cell.source))
        if grade_id(cell):
            order.append(grade_id(cell))
        if is_grade(cell):
            grade[grade_id(cell)] = cell.source
    return trusted, grade, order


def reorder_grade_cells(cells, order):
    """Put each grade cell after every cell that precedes it in the source notebook (`order`:
    grade ids in source order), and after where the student left it."""
    pos = {gid: i for i, gid in enumerate(order)}
    rest = [c for c in cells if not (is_grade(c) and grade_id(c) in pos)]
    grades = []
    seen_rest = 0
    for c in cells:
        if is_grade(c) and grade_id(c) in pos:
            need = 0
            for k, r in enumerate(rest):
                g = grade_id(r)
                if g in pos and pos[g] < pos[grade_id(c)]:
                    need = k + 1
            grades.append((max(seen_rest, need), pos[grade_id(c)], c))
        else:
            seen_rest += 1
    grades.sort(key=lambda t: (t[0], t[1]))
    out, gi = [], 0
    for k in range(len(rest) + 1):
        while gi < len(grades) and grades[gi][0] == k:
            out.append(grades[gi][2])
            gi += 1
        if k < len(rest):
            out.append(rest[k])
    return out


class JudgeProcess:
    """The judge subprocess and its framed channel (see grader/judge.py)."""

    def __init__(self, command, env, cwd):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, cwd=cwd,
                                     start_new_session=True)
        self.buffer = b""

    def send(self, header, blob=b""):
        data = json.dumps(header).encode()
        self.proc.stdin.write(struct.pack(">IQ", len(data), len(blob)) + data + blob)
        self.proc.stdin.flush()

    def recv(self, deadline):
        head = self._read(12, deadline)
        n, m = struct.unpack(">IQ", head)
        if n > 64 << 20 or m > 1 << 30:
            raise EOFError("the judge sent an oversized frame")
        header = json.loads(self._read(n, deadline))
        if not isinstance(header, dict):
            raise EOFError("the judge sent a malformed frame")
        return header, self._read(m, deadline) if m else b""

    def _read(self, n, deadline):
        fd = self.proc.stdout.fileno()
        while len(self.buffer) < n:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError()
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError()
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise EOFError("the judge stopped")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def kill(self):
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def error_output(ename, evalue):
    evalue = str(evalue)[:20000]
    return NotebookNode(output_type="error", ename=ename, evalue=evalue,
                        traceback=[f"{ename}: {evalue}" if evalue else ename])


class JudgedExecute(Execute):
    """nbgrader's Execute, with grade cells run by the judge (see the module docstring)."""

    source_notebook = Unicode(
        "", help="the trusted source notebook (default: the nbgrader course's source/ copy)"
    ).tag(config=True)
    judge_command = List(
        [], help="command that starts the judge (default: this Python, -m grader.judge)"
    ).tag(config=True)
    max_output_chars = Integer(100_000, help="characters kept per output").tag(config=True)
    max_cell_chars = Integer(300_000, help="characters kept per cell").tag(config=True)
    max_cell_outputs = Integer(200, help="outputs kept per cell").tag(config=True)
    max_notebook_chars = Integer(2_000_000, help="characters kept per notebook").tag(config=True)
    max_message_bytes = Integer(64 << 20, help="largest kernel message read").tag(config=True)
    sandboxed = Bool(False, help="start kernels through grader/kernel_launcher.py").tag(config=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.sandboxed:
            from .sandbox import SandboxKernelManager
            self.kernel_manager_class = SandboxKernelManager

    # ------------------------------------------------------------------ setup

    def preprocess(self, nb, resources=None, km=None):
        import nbformat
        self._token = secrets.token_hex(12)
        self._installed_kc = None
        self._dead = None
        self._judge = None
        self._notebook_chars = 0
        self._cell_chars = {}
        self._capped = set()
        src_path = self._source_path(resources)
        source_nb = nbformat.read(src_path, as_version=4)
        self._trusted, self._grade_sources, order = trusted_cells(source_nb)
        nb.cells = reorder_grade_cells(nb.cells, order)
        self._start_judge()
        try:
            return super().preprocess(nb, resources, km)
        finally:
            if self._judge is not None:
                self._judge.kill()
                self._judge = None

    def _source_path(self, resources):
        if self.source_notebook:
            return self.source_notebook
        info = (resources or {}).get("nbgrader", {})
        root = self.config.get("CourseDirectory", {}).get("root") or os.getcwd()
        return os.path.join(root, "source", info["assignment"], f"{info['notebook']}.ipynb")

    def _start_judge(self):
        command = list(self.judge_command) or [sys.executable, "-m", "grader.judge"]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self._judge = JudgeProcess(command, env, cwd=str(ROOT))
        self._judge_ready = False
        self._judge.send({"op": "init", "sources": self._trusted,
                          "env": {k: os.environ[k] for k in ("NBGRADER_EXECUTION", "COURSE_DATA")
                                  if k in os.environ}})

    def _ensure_judge(self, deadline):
        """(judge, None) ready to run a cell, or (None, error text)."""
        if self._judge is None:
            self._start_judge()
        if not self._judge_ready:
            try:
                header, _ = self._judge.recv(deadline)
            except (TimeoutError, EOFError, ValueError, struct.error) as exc:
                self._judge.kill()
                self._judge = None
                return None, f"the grader's judge did not start ({type(exc).__name__})"
            if header.get("op") != "ready":
                return None, "the grader's judge did not start"
            if header.get("error"):
                return None, str(header["error"])
            self._judge_ready = True
        return self._judge, None

    # ------------------------------------------------------------------ cells

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return super().preprocess_cell(cell, resources, index)
        if self._installed_kc is not self.kc and not self._dead:
            self._install(index)
        if is_grade(cell):
            cell.outputs = self._judge_cell(cell, index)
            cell.execution_count = None
            return cell, resources
        if self._dead:
            cell.outputs = [error_output("DeadKernelError", self._dead)]
            return cell, resources
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except Exception as exc:  # noqa: BLE001 - the kernel died: the rest of this notebook fails
            self._dead = f"the notebook's kernel stopped ({type(exc).__name__}: {exc})"[:500]
            cell.outputs = [error_output("DeadKernelError", self._dead)]
            return cell, resources
        timed_out = any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError"
                        for o in cell.get("outputs", []))
        if timed_out and not run_sync(self._async_kernel_answers)():
            # Interrupted but deaf (its message loop is broken): every later cell would wait out
            # the whole timeout again. The rest of the notebook fails at once instead.
            self._dead = "the notebook's kernel stopped answering after a cell ran past the time limit"
        return cell, resources

    async def _async_kernel_answers(self, wait=15):
        """True if the kernel answers a kernel_info request within `wait` seconds."""
        from queue import Empty
        from nbclient.util import ensure_async
        msg_id = self.kc.kernel_info()
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=left))
            except Empty:
                return False
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return True

    def _install(self, index):
        code = (f"(lambda d: (exec(compile({STUDENT_SIDE!r}, '<grader bridge>', 'exec'), d), "
                f"d['install']({self._token!r})))({{}})")
        self._run_hidden(code, index)
        self._installed_kc = self.kc

    def _run_hidden(self, source, index, timeout=None):
        """Run code in the kernel outside the notebook; return its outputs."""
        cell = NotebookNode(cell_type="code", source=source, metadata=NotebookNode(),
                            outputs=[], execution_count=None, id=f"grader-{index}")
        real = self.nb.cells[index]
        old = self.timeout
        if timeout is not None:
            self.timeout = max(1, int(timeout))
        self._hidden_cell = True
        try:
            self.execute_cell(cell, index, store_history=False)
        finally:
            self.timeout = old
            self._hidden_cell = False
            self.nb.cells[index] = real
        return cell.outputs

    def _judge_cell(self, cell, index):
        gid = grade_id(cell)
        source = self._grade_sources.get(gid)
        if source is None:
            return [error_output("GradingError", f"no test cell {gid!r} in the source notebook")]
        budget = self.timeout or 300
        deadline = time.monotonic() + budget + 30
        judge, problem = self._ensure_judge(time.monotonic() + 300)
        if problem:
            return [error_output("GradingError", problem)]
        judge.send({"op": "cell", "source": source})
        cell_deadline = time.monotonic() + budget
        while True:
            try:
                header, blob = judge.recv(deadline)
            except TimeoutError:
                self._restart_judge()
                return [error_output("CellTimeoutError",
                                     f"the tests ran longer than {budget} s and were stopped")]
            except (EOFError, ValueError, struct.error) as exc:
                self._restart_judge()
                return [error_output("GradingError", f"the grader's judge stopped ({exc})")]
            op = header.get("op")
            if op == "request":
                reply = self._serve(blob, index, cell_deadline)
                judge.send(*reply)
                continue
            if op == "done":
                return self._cell_outputs(header)
            self._restart_judge()
            return [error_output("GradingError", "the grader's judge is out of step")]

    def _restart_judge(self):
        if self._judge is not None:
            self._judge.kill()
        self._judge = None

    def _cell_outputs(self, header):
        outputs = []
        for item in header.get("outputs") or []:
            if (isinstance(item, list) and len(item) == 2 and item[0] in ("stdout", "stderr")
                    and isinstance(item[1], str)):
                outputs.append(NotebookNode(output_type="stream", name=item[0],
                                            text=item[1][: self.max_output_chars]))
        error = header.get("error")
        if isinstance(error, list) and len(error) == 2:
            ename = error[0] if isinstance(error[0], str) and error[0].isidentifier() else "Error"
            outputs.append(error_output(ename, error[1] if isinstance(error[1], str) else ""))
        return outputs

    def _serve(self, request, index, cell_deadline):
        """Run one bridge request in the student's kernel: (reply header, blob) for the judge."""
        if self._dead:
            return {"op": "reply", "status": "dead", "message": self._dead}, b""
        left = cell_deadline - time.monotonic()
        if left <= 0:
            return {"op": "reply", "status": "timeout",
                    "message": f"the tests ran longer than {self.timeout} s"}, b""
        code = f"_grader_serve_{self._token}({base64.b64encode(request).decode()!r})"
        try:
            outputs = self._run_hidden(code, index, timeout=left)
        except Exception as exc:  # noqa: BLE001 - the kernel died
            self._dead = f"the notebook's kernel stopped ({type(exc).__name__})"
            return {"op": "reply", "status": "dead", "message": self._dead}, b""
        streams, reply, status, message = [], None, "ok", ""
        for out in outputs:
            if out.output_type == "stream":
                streams.append([out.name, out.text])
            elif out.output_type == "display_data" and student_side.REPLY_MIME in out.get("data", {}):
                reply = out["data"][student_side.REPLY_MIME]
            elif out.output_type == "error":
                if out.ename == "CellTimeoutError":
                    status = "timeout"
                    message = f"the student's code ran longer than {int(left)} s and was stopped"
                elif reply is None:
                    status, message = "error", f"the bridge in the student's kernel failed " \
                                               f"({out.ename})"
        if status == "ok" and reply is None:
            status, message = "error", "the student's kernel gave no answer (was the grader's " \
                                       "bridge removed?)"
        blob = b""
        if status == "ok":
            try:
                blob = base64.b64decode(reply, validate=True) if isinstance(reply, str) else b""
            except ValueError:
                status, message = "error", "the student's kernel answered garbage"
        return {"op": "reply", "status": status, "message": message, "streams": streams}, blob

    # ------------------------------------------------------------------ output limits

    def _hidden_output(self, outs, msg, display_id, cell_index):
        """During a bridge request keep only the reply, errors and the student's prints up to
        max_cell_chars per request: nothing else the kernel sends is stored."""
        content = msg.get("content", {})
        kind = msg.get("msg_type")
        if kind == "display_data" and student_side.REPLY_MIME in content.get("data", {}):
            return super().output(outs, msg, None, cell_index)
        if kind == "error":
            out = super().output(outs, msg, None, cell_index)
            if out is not None:
                _truncate(out, self.max_output_chars)
            return out
        if kind != "stream" or not isinstance(content.get("text"), str):
            return None
        used = sum(len(o.get("text", "")) for o in outs if o.get("output_type") == "stream")
        room = self.max_cell_chars - used
        if room <= 0:
            return None
        text = content["text"]
        if len(text) > room:
            text = text[:room] + "\n... more output was cut by the grader ...\n"
        out = NotebookNode(output_type="stream", name=content.get("name", "stdout"), text=text)
        outs.append(out)
        return out

    def _update_display_id(self, display_id, msg):
        # Display updates would rewrite earlier outputs past every size check: outputs stay as
        # they were first shown.
        return None

    def handle_comm_msg(self, outs, msg, cell_index):
        # Widget state is neither graded nor shown in feedback: never stored.
        return None

    def output(self, outs, msg, display_id, cell_index):
        if getattr(self, "_hidden_cell", False):
            return self._hidden_output(outs, msg, display_id, cell_index)
        size = _output_size(msg.get("content", {}))
        used = self._cell_chars.get(cell_index, 0)
        if (len(outs) >= self.max_cell_outputs or used + size > self.max_cell_chars
                or self._notebook_chars + size > self.max_notebook_chars):
            if cell_index not in self._capped:
                self._capped.add(cell_index)
                outs.append(NotebookNode(output_type="stream", name="stdout",
                                         text="\n... more output was cut by the grader ...\n"))
            return None
        self._cell_chars[cell_index] = used + size
        self._notebook_chars += size
        out = super().output(outs, msg, display_id, cell_index)
        if out is not None:
            _truncate(out, self.max_output_chars)
        return out

    # ------------------------------------------------------------------ the kernel client

    async def async_start_new_kernel(self, **kwargs):
        # The kernel's own log (e.g. ipykernel's transport notice) is nobody's business: cell
        # output, errors included, comes back through the notebook protocol.
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        return await super().async_start_new_kernel(**kwargs)

    async def async_start_new_kernel_client(self):
        # Sockets made from here on drop any message over the cap before Python reads it.
        import zmq
        self.km.context.setsockopt(zmq.MAXMSGSIZE, int(self.max_message_bytes))
        # Never reconnect: the kernel owns its socket files and could swap one for a link to
        # another process's socket once the first connection drops.
        self.km.context.setsockopt(zmq.RECONNECT_IVL, -1)
        kc = await super().async_start_new_kernel_client()
        # The heartbeat thread opens a new socket, by path, whenever a beat is missed; liveness
        # comes from the kernel manager (the process), so it is not needed at all.
        if kc.hb_channel.is_alive():
            kc.hb_channel.stop()
        return kc

    # nbclient binds these sync wrappers to its own coroutines; rebind them to the ones above.
    start_new_kernel = run_sync(async_start_new_kernel)
    start_new_kernel_client = run_sync(async_start_new_kernel_client)


def _output_size(content):
    size = 0
    for key in ("text", "data"):
        value = content.get(key)
        if isinstance(value, str):
            size += len(value)
        elif isinstance(value, dict):
            size += sum(len(v) if isinstance(v, str) else len(json.dumps(v)) for v in value.values())
    return size + sum(len(t) for t in content.get("traceback", []) if isinstance(t, str))


def _truncate(out, limit):
    if out.get("output_type") == "stream" and len(out.get("text", "")) > limit:
        out["text"] = out["text"][:limit] + f"\n... output cut by the grader ({len(out['text'])} characters) ...\n"
    for mime, value in list(out.get("data", {}).items()):
        if isinstance(value, str) and len(value) > 5 * limit:
            out["data"][mime] = value[:limit] + " ... cut by the grader" if mime.startswith("text/") else ""
