"""nbgrader plumbing for grading untrusted notebooks: the sandboxed kernel, and deleted test
cells put back wherever they sat.

Loaded by grader/grading_config.py inside the nbgrader process (never by notebooks).

SandboxKernelManager starts each kernel through grader/kernel_launcher.py (bubblewrap: its own
namespaces, a file system with nothing but Python and the course data, another user id, cgroup
and rlimits), in a runtime folder of its own: its connection file and ipc sockets live there and
no other kernel can see them. Kernels talk over ipc (there is no network in the sandbox).
Interrupts travel as a message (nothing signals across the sandbox boundary).
"""
import os
import sys
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

LAUNCHER = Path(__file__).resolve().parent / "kernel_launcher.py"


class SandboxKernelManager(AsyncKernelManager):
    @default("transport")
    def _sandbox_transport(self):
        return "ipc"

    def write_connection_file(self, **kwargs):
        if not getattr(self, "_sandbox_dir", None):
            from jupyter_core.paths import jupyter_runtime_dir
            parent = jupyter_runtime_dir()
            os.makedirs(parent, exist_ok=True)
            self._sandbox_dir = tempfile.mkdtemp(prefix="kernel-", dir=parent)
            # The one host folder a kernel may write: as root, a tiny tmpfs of its own, so that
            # it cannot fill the disk or its inodes (it needs room for a few sockets only).
            self._sandbox_mounted = _mount_tmpfs(self._sandbox_dir, "size=1m,nr_inodes=64,mode=0700")
            self.connection_file = os.path.join(self._sandbox_dir, "connection.json")
            self.ip = os.path.join(self._sandbox_dir, "ipc")
        return super().write_connection_file(**kwargs)

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        return [sys.executable, str(LAUNCHER), "--kernel", "--runtime", self._sandbox_dir, *cmd]

    async def _async_interrupt_kernel(self):
        msg = self.session.msg("interrupt_request", content={})
        self._connect_control_socket()
        self.session.send(self._control_socket, msg)

    async def _async_cleanup_resources(self, restart=False):
        await super()._async_cleanup_resources(restart=restart)
        folder = getattr(self, "_sandbox_dir", None)
        if folder and not restart:
            import shutil
            if getattr(self, "_sandbox_mounted", False):
                _unmount(folder)
            shutil.rmtree(folder, ignore_errors=True)
            self._sandbox_dir = None


def _mount_tmpfs(path, options):
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, options.encode()) == 0


def _unmount(path):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(path.encode(), 2)   # MNT_DETACH: even if something still holds it


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
