"""Drive the course's JupyterLab in headless Chromium, as a student would (used by test_browser.py).

No conftest magic: tests import what they need from here.

- `require_chromium()` skips (locally) or fails (when CI is set) if /usr/bin/chromium or the
  Playwright package is missing. A browser is never downloaded.
- `lab_server(root)` starts `jupyter lab` from this venv on 127.0.0.1 with a token, a free port
  and a throw-away HOME, and always stops it again (its kernels go with it).
- `LabPage` opens a notebook, runs all cells through the Run menu, waits until the run is over,
  and reads back what the student sees (outputs, figures, errors) and the notebook model.

Facts behind the selectors and flags: shared/BROWSER_NOTES.md (JupyterLab 4.6, nbgrader 0.9.6).
"""
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"

CHROMIUM_ARGS = [
    "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--no-proxy-server",          # 127.0.0.1 must never go through an http_proxy from the env
    "--no-sandbox",               # needed as root, and in most CI containers; the page is local
]

SERVER_START_S = 120       # answers /api/status after ~2-3 s idle; 25 s seen on a loaded 2-core box
NOTEBOOK_LOAD_S = 120      # cells rendered and kernel idle (~3 s idle, ~25 s under load)
RUN_ALL_S = 240            # a small notebook's run-all; 01 took 40 s on a loaded 2-core box


def _missing(reason):
    """Skip with the reason locally; in CI (CI set, and CI installs chromium) this is a failure."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} — CI must provide it (.ci/run installs Debian's chromium)")
    pytest.skip(f"{reason}; install it with `apt-get install -y chromium` to run the browser tests")


def require_chromium():
    """Return playwright.sync_api.sync_playwright, or skip/fail with a clear reason."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        _missing(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed (it is in requirements.txt)")
    return sync_playwright


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(home):
    """Pre-written user settings: no 'get Jupyter news?' pop-up covering the page."""
    settings = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def _server_log_tail(log_path, n=40):
    try:
        return "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


@contextlib.contextmanager
def lab_server(root_dir, env=None):
    """Run `jupyter lab` serving `root_dir`; yield (base_url, token). Always stopped on exit."""
    home = Path(tempfile.mkdtemp(prefix="course-lab-home-"))
    _write_settings(home)
    token = secrets.token_hex(16)
    port = free_port()
    server_env = dict(os.environ if env is None else env)
    server_env.update({
        "HOME": str(home),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + server_env.get("PATH", ""),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / ".ipython"),
        "MPLCONFIGDIR": str(home / ".matplotlib"),
        "PYTHONWARNINGS": "ignore",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    server_env.setdefault("COURSE_DATA", str(ROOT / "data"))
    server_env.setdefault("CUDA_VISIBLE_DEVICES", "")
    cmd = [sys.executable, "-m", "jupyter", "lab",
           "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
           f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root_dir}",
           "--LabApp.expose_app_in_browser=True",   # lets the test read the notebook model
           "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = home / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=root_dir, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n"
                                   f"{_server_log_tail(log_path)}")
            try:
                with opener.open(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer within {SERVER_START_S} s:\n"
                                   f"{_server_log_tail(log_path)}")
            time.sleep(0.25)
        yield base, token
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _stop(proc):
    """SIGTERM the server (it shuts its kernels down); then its whole session if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # Anything the server started (kernels) lives in the server's own session: make sure it is gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def chromium_page(viewport=(1400, 1000)):
    """A fresh headless Chromium page (the system's /usr/bin/chromium); closed on exit."""
    sync_playwright = require_chromium()
    args = list(CHROMIUM_ARGS)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args,
                                     timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def workspace(names, data=True):
    """A throw-away copy of the course's notebooks/ and solutions/ (only `names`) to serve, so
    that nothing a browser run saves (autosave, checkpoints) can touch the repository."""
    tmp = Path(tempfile.mkdtemp(prefix="course-lab-root-"))
    for folder in ("notebooks", "solutions"):
        (tmp / folder).mkdir()
        for name in names:
            src = ROOT / folder / f"{name}.ipynb"
            if src.exists():
                nb = json.loads(src.read_text())
                for cell in nb["cells"]:          # a numbered prompt must mean "ran in this test"
                    if cell["cell_type"] == "code":
                        cell["outputs"], cell["execution_count"] = [], None
                (tmp / folder / src.name).write_text(json.dumps(nb, indent=1))
    if data and (ROOT / "data").is_dir():
        (tmp / "data").symlink_to(ROOT / "data", target_is_directory=True)
    return tmp


# ------------------------------------------------------------------ the page, as a student sees it

ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"

_RUN_DONE_JS = """
(active) => {
  const panel = document.querySelector(active);
  const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
  if (!panel || !ind || ind.getAttribute('data-status') !== 'idle') return false;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
      .map(p => p.textContent.trim());
  return prompts.some(p => /\\[\\d+\\]/.test(p)) && !prompts.some(p => p.includes('*'));
}
"""

_MODEL_JS = """
() => {
  const w = window.jupyterapp.shell.currentWidget;
  return {path: w.context.path, nb: w.content.model.toJSON()};
}
"""


class LabPage:
    def __init__(self, page, base, token):
        self.page, self.base, self.token = page, base, token

    def open(self, path, n_cells):
        """Open `path` (relative to the server root) and wait for its cells and an idle kernel."""
        page = self.page
        # A fresh named workspace: JupyterLab would otherwise restore the previous page's tabs.
        workspace = f"t{secrets.token_hex(6)}"
        page.goto(f"{self.base}/lab/workspaces/{workspace}/tree/{path}?token={self.token}",
                  timeout=NOTEBOOK_LOAD_S * 1000)
        page.wait_for_function(
            "([sel, n]) => document.querySelectorAll(sel).length >= n",
            arg=[f"{ACTIVE} .jp-Cell", n_cells], timeout=NOTEBOOK_LOAD_S * 1000)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]',
                               state="attached", timeout=NOTEBOOK_LOAD_S * 1000)
        assert self.model()["path"] == path, "JupyterLab opened a different document"

    def run_all(self):
        """Run ▸ Run All Cells, from the menu bar; wait until no cell is queued or running."""
        page = self.page
        page.locator("#jp-menu-panel .lm-MenuBar-item", has_text="Run").first.click()
        page.locator('#jp-mainmenu-run .lm-Menu-item[data-command="runmenu:run-all"]').click()
        t0 = time.monotonic()
        # Notebooks are opened WITHOUT execution counts, so a numbered prompt means the run began;
        # '[*]' marks a queued or running cell (run-all queues every cell at once; after an error
        # the kernel drops the rest of the queue and their prompts go back to '[ ]').
        page.wait_for_function(_RUN_DONE_JS, arg=ACTIVE, timeout=RUN_ALL_S * 1000, polling=250)
        return time.monotonic() - t0

    def model(self):
        """The notebook as JupyterLab holds it now (nbformat JSON, with the outputs of this run)."""
        return self.page.evaluate(_MODEL_JS)

    def show_cell(self, index):
        """Make cell `index` the active cell and scroll it into view, as a student would; return
        {text of its outputs, whether it is on screen, [width, height] of each figure the browser
        decoded in its outputs}. (JupyterLab 4.6 renders off-screen cells
        with content-visibility, so text is read with textContent, after scrolling.)"""
        return self.page.evaluate(
            """async (i) => {
                 const nb = window.jupyterapp.shell.currentWidget.content;
                 nb.activeCellIndex = i;
                 await nb.scrollToItem(i, 'start');
                 await new Promise(r => setTimeout(r, 300));
                 const cell = nb.widgets[i];
                 const area = cell.node.querySelector('.jp-OutputArea');
                 const imgs = [...cell.node.querySelectorAll('.jp-OutputArea-output img')];
                 await Promise.all(imgs.map(im => im.decode().catch(() => null)));
                 // bring what matters on screen: the figure, else the end of the output (the
                 // error line of a traceback)
                 const outs = cell.node.querySelectorAll('.jp-OutputArea-output');
                 const seen = imgs.length ? imgs[0] : (outs.length ? outs[outs.length - 1] : cell.node);
                 seen.scrollIntoView({block: imgs.length ? 'center' : 'end'});
                 await new Promise(r => setTimeout(r, 300));
                 const box = seen.getBoundingClientRect();
                 return {text: area ? area.textContent : '',
                         onScreen: box.bottom > 0 && box.top < window.innerHeight,
                         images: imgs.filter(im => im.complete && im.naturalWidth > 0)
                                     .map(im => [im.naturalWidth, im.naturalHeight])};
               }""", index)

    def validate(self, timeout_s=180):
        """Click nbgrader's Validate button; return the text of the "Validation Results" dialog."""
        button = self.page.locator(f"{ACTIVE} .jp-NotebookPanel-toolbar .validate-button")
        button.wait_for(state="visible")
        button.click()
        dialog = self.page.locator(".jp-Dialog", has_text="Validation Results")
        dialog.wait_for(state="visible", timeout=timeout_s * 1000)
        return dialog.inner_text()

    def screenshot(self, filename):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / filename
        self.page.screenshot(path=str(path))
        return path


def code_cells(nb):
    """[(index in the notebook, cell)] for the code cells of an nbformat dict."""
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def errors(nb):
    """[(cell index, ename, evalue)] for every error output in an nbformat dict."""
    out = []
    for i, cell in code_cells(nb):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append((i, o.get("ename"), o.get("evalue")))
    return out


def source_of(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def read_notebook(path):
    return json.loads(Path(path).read_text())


def prompts(nb):
    """{cell index: execution count (None: did not run)} for every code cell."""
    return {i: c.get("execution_count") for i, c in code_cells(nb)}


def stderr_texts(nb):
    """Text of every stderr stream output (JupyterLab shows it red, like an error)."""
    return [source_of({"source": o.get("text", "")})
            for _, c in code_cells(nb) for o in c.get("outputs", [])
            if o.get("output_type") == "stream" and o.get("name") == "stderr"]
