#!/usr/bin/env python3
"""The course's two entry points, usable on a machine with only Python 3.11 and git.

    python3 course.py lab    # create .venv if missing, install, open JupyterLab at notebooks/
    python3 course.py test   # create .venv if missing, install, run the whole test suite

Only the standard library is used here: this file runs before anything is installed.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements.txt"
# Where a finished install records which requirements it satisfied, so a second run is instant.
STAMP = VENV / ".course-requirements.sha256"


def venv_bin(name):
    sub = "Scripts" if os.name == "nt" else "bin"
    return VENV / sub / (name + (".exe" if os.name == "nt" else ""))


def ensure_venv():
    if sys.version_info[:2] != (3, 11):
        print(f"Note: the course is pinned and tested on Python 3.11; this is "
              f"{sys.version.split()[0]}.", file=sys.stderr)
    if not venv_bin("python").exists():
        print(f"Creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    print("Installing the course's pinned packages (torch is large: a few minutes the first time) ...",
          flush=True)
    pip = [str(venv_bin("python")), "-m", "pip"]
    subprocess.run(pip + ["install", "-q", "-r", str(REQUIREMENTS)], check=True)
    STAMP.write_text(wanted + "\n")


def ensure_sandbox():
    """The grader sandboxes student code with bubblewrap (Debian's `bubblewrap`). As root on a
    Debian-like system, install it; otherwise say how (grading then runs without isolation)."""
    if not sys.platform.startswith("linux") or shutil.which("bwrap"):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("Installing bubblewrap (the grader's sandbox) ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for extra in ([], ["-o", "APT::Sandbox::User=root"]):
            if subprocess.run(["apt-get", *extra, "install", "-y", "-qq", "bubblewrap"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                return
    print("Note: bubblewrap is not installed; `grader grade` needs it to isolate students' code "
          "(e.g. sudo apt-get install bubblewrap).", file=sys.stderr)


def venv_env():
    env = dict(os.environ)
    # nbgrader shells out to alembic and jupyter: the venv's bin must come first on PATH.
    env["PATH"] = str(venv_bin("python").parent) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(VENV)
    return env


def has_display():
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def lab(extra):
    cmd = [str(venv_bin("jupyter")), "lab", "--notebook-dir", str(ROOT),
           "--ServerApp.default_url=/lab/tree/notebooks"]
    if not has_display():
        # No screen to open a browser on: JupyterLab still prints the URL to open by hand.
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    print("Starting JupyterLab; open the http://127.0.0.1:... URL it prints below.", flush=True)
    os.execve(cmd[0], cmd + extra, venv_env())


def test(extra):
    cmd = [str(venv_bin("python")), "-m", "pytest"] + extra
    return subprocess.run(cmd, cwd=ROOT, env=venv_env()).returncode


def main(argv):
    if len(argv) < 1 or argv[0] not in ("lab", "test"):
        print(__doc__.strip())
        return 2
    ensure_venv()
    ensure_sandbox()
    if argv[0] == "lab":
        lab(argv[1:])
    return test(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
