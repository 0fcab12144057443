"""The two README commands, the pins, and CI calling what the README says."""
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from grader import paths

ROOT = paths.ROOT


def pins_from_requirements():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def pins_from_environment_yml():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*-\s*python=3\.11\s*$", text, re.M), "environment.yml must pin python 3.11"
    return {m[0].lower(): m[1] for m in re.findall(r"^\s*-\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", text, re.M)}


def test_requirements_and_environment_yml_pin_the_same_versions():
    req, env = pins_from_requirements(), pins_from_environment_yml()
    assert req == env, f"only in requirements.txt: {req.items() - env.items()}; " \
                       f"only in environment.yml: {env.items() - req.items()}"


def test_the_pins_the_course_promises():
    req = pins_from_requirements()
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1" and req["nbgrader"] == "0.9.6"
    for name in ("jupyterlab", "matplotlib", "tqdm", "pytest", "playwright", "numpy"):
        assert name in req, f"{name} is not pinned"


def test_the_installed_versions_are_the_pinned_ones():
    from importlib.metadata import version
    for name, pinned in pins_from_requirements().items():
        assert version(name).split("+")[0] == pinned, f"{name} {version(name)} installed, {pinned} pinned"


def readme_commands():
    """The shell commands in README.md's first code block."""
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_opens_with_the_two_commands():
    cmds = readme_commands()
    assert cmds == ["python3 course.py lab", "python3 course.py test"], cmds


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = readme_commands()[1]
    assert any(line.strip() == test_cmd for line in ci.splitlines()), f".ci/run must run {test_cmd!r}"


def test_course_py_uses_only_the_standard_library():
    """It runs before anything is installed."""
    import ast
    tree = ast.parse((ROOT / "course.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert mods <= set(sys.stdlib_module_names), mods - set(sys.stdlib_module_names)


@pytest.mark.slow
def test_lab_command_starts_without_a_display_and_prints_the_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(HOME=str(tmp_path), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    import socket
    with socket.socket() as s:          # a free port, named explicitly: the URL must carry it
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "course.py"), "lab", "--ip=127.0.0.1", f"--port={free_port}",
         "--ServerApp.port_retries=20",
         "--IdentityProvider.token=course-test"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    seen = []
    try:
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
        deadline = time.time() + 120
        url = None
        while time.time() < deadline and url is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            # JupyterLab masks a token given on the command line as "token=...".
            m = re.search(r"(http://127\.0\.0\.1:\d+/lab\S*token=\S+)", line)
            url = m and m.group(1)
        assert url, "JupyterLab printed no URL:\n" + "".join(seen[-30:])
        assert "/lab" in url
        import urllib.error
        import urllib.request
        port = re.search(r":(\d+)/", url).group(1)
        status, last_error = None, None
        for _ in range(30):             # the URL may be printed a moment before it answers
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token=course-test",
                                            timeout=10) as r:
                    status = r.status
                break
            except (urllib.error.URLError, ConnectionError) as err:
                last_error = err
                time.sleep(1)
        assert status == 200, f"{url} does not answer ({last_error}); JupyterLab said:\n" + "".join(seen[-30:])
        tree = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/contents/notebooks?token=course-test", timeout=10).read()
        assert b"01_gate_equations.ipynb" in tree
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
