"""Start a student's kernel, or the grader's judge, inside a sandbox of its own.

    python kernel_launcher.py --kernel KERNEL_COMMAND ...   (SandboxKernelManager runs this)
    python kernel_launcher.py --judge JUDGE_COMMAND ...     (the judge, grader/judged_execute.py)
    python kernel_launcher.py --probe                       (print which limits apply here)

Standard library only: it runs before the kernel exists. The sandbox is bubblewrap (`bwrap`,
Debian's `bubblewrap` package), which builds the process's whole view of the system from
scratch:

- its own mount, PID, IPC, UTS, cgroup and (unless the network is allowed) network namespaces;
  a fresh /proc (no other process is visible), a minimal /dev, size-limited tmpfs for /tmp,
  /dev/shm and HOME (which vanish with the sandbox);
- a file system that holds only what Python needs (the system folders, the Python prefix, the
  virtual environment, the course's MNIST copy), read-only. The repository (solutions, hidden
  tests), the grading work folder (other students' copies, gradebooks, feedback), the
  submissions and everything else on the machine do not exist in there. A kernel also sees its
  own runtime folder (its connection file and sockets), read-write, and nothing of any other
  kernel's;
- when the grader runs as root: a user id of its own for each grading slot (GRADER_UID), no
  capabilities, no_new_privs; a memory cgroup counting everything the sandbox uses (processes,
  children, shared memory, tmpfs) and a pids cgroup, both created here under GRADER_CGROUP and
  removed when the sandbox ends;
- always: rlimits on the data segment (a big allocation is a clean MemoryError), file size, core
  dumps; stdout and stderr go nowhere (the notebook protocol carries the output).

Settings (environment, set by `python -m grader grade`): GRADER_MEMORY_MB, GRADER_FILE_MB,
GRADER_MAX_TASKS, GRADER_NO_NETWORK ("1"), GRADER_UID and GRADER_JUDGE_UID (when root: the
kernel's and the judge's user ids), GRADER_CGROUP (JSON {controller: folder}), GRADER_DATA
(folder shown read-only), GRADER_SHOW (os.pathsep-separated folders the judge also sees
read-only: the repository). A kernel's own runtime folder (connection file and sockets) comes
as `--kernel --runtime DIR` and is shown read-write.

Without bubblewrap, or where it cannot start, the process runs with the rlimits and (as root)
another user id only; --probe and `grader grade` say so. A sandbox that should drop root and
cannot is not started at all.
"""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

BWRAP = shutil.which("bwrap") or ("/usr/bin/bwrap" if os.path.exists("/usr/bin/bwrap") else None)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
HOME = "/home/student"
TMPFS_MB = 256


def setting(name, default=""):
    return os.environ.get(name, default)


def _int(name):
    try:
        return int(setting(name, "0") or 0)
    except ValueError:
        return 0


# ------------------------------------------------------------------ cgroups

def _cgroup_parents():
    try:
        parents = json.loads(setting("GRADER_CGROUP") or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in parents.items() if isinstance(v, str) and os.path.isdir(v)}


def make_cgroups(name, memory_mb, tasks):
    """Create cgroups `name` under GRADER_CGROUP's folders, put this process in them; return the
    folders made (the sandbox started from here inherits them)."""
    made = []
    for controller, parent in _cgroup_parents().items():
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except OSError:
            continue
        made.append(path)
        limits = []
        if controller in ("memory", "unified") and memory_mb:
            limit = (memory_mb + 1024) << 20
            limits += [("memory.limit_in_bytes", limit), ("memory.memsw.limit_in_bytes", limit),
                       ("memory.max", limit), ("memory.swap.max", 0)]
        if controller in ("pids", "unified") and tasks:
            limits.append(("pids.max", tasks))
        for filename, value in limits:
            try:
                with open(os.path.join(path, filename), "w") as f:
                    f.write(str(value))
            except OSError:
                pass
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass
    return made


def remove_cgroups(made):
    """Kill what is left in the sandbox's cgroups, move out, remove them."""
    for path in made:
        parent = os.path.dirname(path)
        try:
            with open(os.path.join(parent, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass
    for path in made:
        kill_cgroup(path)


def kill_cgroup(path):
    for _ in range(50):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            os.rmdir(path)
            return True
        except OSError:
            import time
            time.sleep(0.05)
    return False


def _own_cgroups():
    """{controller: folder of this process's cgroup} for memory and pids (v1), or unified (v2)."""
    found = {}
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = "/sys/fs/cgroup"
            if os.path.exists(os.path.join(base, "cgroup.controllers")):
                found["unified"] = os.path.join(base, path.lstrip("/"))
            continue
        for c in controllers.split(","):
            if c in ("memory", "pids"):
                found[c] = os.path.join("/sys/fs/cgroup", c, path.lstrip("/"))
    if "memory" in found or "pids" in found:
        found.pop("unified", None)
    return found


def make_run_cgroups(name):
    """A parent cgroup for one grading run (root only): {controller: folder}; {} where cgroups
    cannot be made. Sandboxes create theirs inside (GRADER_CGROUP)."""
    made = {}
    for controller, base in _own_cgroups().items():
        path = os.path.join(base, name)
        try:
            os.mkdir(path)
        except OSError:
            continue
        if controller == "unified":
            try:   # let children use the memory and pids controllers
                with open(os.path.join(path, "cgroup.subtree_control"), "w") as f:
                    f.write("+memory +pids")
            except OSError:
                os.rmdir(path)
                continue
        made[controller] = path
    return made


def remove_run_cgroups(made):
    """Kill whatever is still inside a run's cgroups (sandboxes whose launcher was killed) and
    remove them."""
    for path in made.values():
        if not os.path.isdir(path):
            continue
        for child in sorted(os.listdir(path)):
            sub = os.path.join(path, child)
            if os.path.isdir(sub):
                kill_cgroup(sub)
        kill_cgroup(path)


# ------------------------------------------------------------------ the bubblewrap command

def _ancestors(path):
    parts = os.path.normpath(path).split(os.sep)[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def python_dirs():
    """Folders this Python needs: its prefix (the venv) and the base installation."""
    dirs = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    exe = os.path.realpath(sys.executable)
    dirs.add(os.path.dirname(os.path.dirname(exe)))
    return sorted(d for d in dirs if d and d != "/")


def bwrap_command(cmd, *, runtime=None, show=(), network=False, as_root=False, cwd=HOME):
    args = [BWRAP, "--die-with-parent", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "sandbox"]
    if not network:
        args.append("--unshare-net")
    if not as_root:
        args.append("--unshare-user")
    binds = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            binds.append(d)
    here = os.path.realpath(__file__)
    binds += [d for d in list(python_dirs()) + [p for p in show if p] if os.path.exists(d)]
    binds.append(here)
    args += ["--proc", "/proc", "--dev", "/dev"]
    size = str(TMPFS_MB << 20)
    for d in ("/tmp", "/dev/shm", HOME):
        args += ["--perms", "1777", "--size", size, "--tmpfs", d]
    # Binds come after the private tmpfs mounts, so a course folder under /tmp stays visible;
    # bwrap would make the folders above a bind owner-only: make them traversable first.
    parents = sorted({a for b in binds + [runtime or "/"] for a in _ancestors(b)} - set(binds))
    for d in parents:
        args += ["--perms", "0755", "--dir", d]
    for d in binds:
        args += ["--ro-bind", d, d]
    if runtime:
        args += ["--bind", runtime, runtime]
    if as_root:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    args += ["--chdir", cwd, "--setenv", "HOME", HOME]
    return args + ["--", sys.executable, here, "--inside", "--"] + cmd


# ------------------------------------------------------------------ inside the sandbox

ENV_KEEP = {"PATH", "HOME", "LANG", "TERM", "TZ", "COURSE_DATA", "NBGRADER_EXECUTION",
            "NBGRADER_VALIDATING", "MPLBACKEND", "CUDA_VISIBLE_DEVICES", "IPYTHONDIR", "MPLCONFIGDIR", "XDG_CACHE_HOME", "TMPDIR"}
HOME_DIRS = {"IPYTHONDIR": ".ipython", "MPLCONFIGDIR": ".mpl", "XDG_CACHE_HOME": ".cache",
             "TMPDIR": "tmp"}


def apply_rlimits(report):
    mem = _int("GRADER_MEMORY_MB")
    if mem > 0:
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (mem << 20, mem << 20))
            report["memory"] = f"on ({mem} MB data segment per process)"
        except (ValueError, OSError) as exc:
            report["memory"] = f"unavailable: {exc}"
    fsize = _int("GRADER_FILE_MB")
    if fsize > 0:
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize << 20, fsize << 20))
            report["file size"] = f"on ({fsize} MB)"
        except (ValueError, OSError) as exc:
            report["file size"] = f"unavailable: {exc}"
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    nproc = _int("GRADER_NPROC")
    if nproc > 0:
        # Counted per user across the machine: set outside the sandbox to what this user already
        # runs plus GRADER_MAX_TASKS (the pids cgroup, where there is one, is the real bound).
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            report["tasks"] = f"on ({_int('GRADER_MAX_TASKS')} more processes or threads)"
        except (ValueError, OSError) as exc:
            report["tasks"] = f"unavailable: {exc}"


def drop_privileges(uid):
    """setgroups/setgid/setuid to `uid` (its own group), then no_new_privs."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("the user id did not change")


def no_new_privs():
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    except (OSError, AttributeError):
        pass


def inside(cmd):
    """Last step, in the sandbox: become the sandbox user, set limits, exec the command."""
    report = {}
    uid = _int("GRADER_UID")
    if os.geteuid() == 0 and uid:
        drop_privileges(uid)
    no_new_privs()
    apply_rlimits(report)
    home = os.environ.get("HOME", HOME)
    for var, sub in HOME_DIRS.items():
        path = os.path.join(home, sub)
        os.makedirs(path, exist_ok=True)
        os.environ[var] = path
    quiet = setting("GRADER_QUIET") == "1"
    # Only what Python, torch and the notebooks need: nothing of the grader's own paths.
    keep = {k: v for k, v in os.environ.items()
            if k in ENV_KEEP or k.startswith(("LC_", "JPY_", "PYTHON", "OMP_", "MKL_"))}
    os.environ.clear()
    os.environ.update(keep, USER="student", LOGNAME="student")
    if quiet:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    os.environ.pop("JPY_PARENT_PID", None)
    os.execvp(cmd[0], cmd)


# ------------------------------------------------------------------ outside: start the sandbox

def can_use_bwrap(as_root):
    if not BWRAP:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    probe = bwrap_command(["true"], as_root=as_root)
    # The probe runs `python kernel_launcher.py --inside -- true`.
    env = dict(os.environ, GRADER_UID="0" if not as_root else setting("GRADER_UID"))
    proc = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return f"bubblewrap cannot start here: {(proc.stderr or '').strip()[-200:]}"
    return None


def start(cmd, kind, runtime=None, conn=None):
    """Run `cmd` sandboxed; return its exit status. `kind`: "kernel" or "judge"."""
    as_root = os.geteuid() == 0
    uid_var = "GRADER_UID" if kind == "kernel" else "GRADER_JUDGE_UID"
    uid = _int(uid_var) if as_root else 0
    if as_root and not uid:
        print(f"kernel_launcher: refusing to start a {kind} as root: {uid_var} is not set",
              file=sys.stderr)
        return 1
    if as_root:
        for path in [p for p in (runtime, conn) if p and os.path.exists(p)]:
            os.chown(path, uid, uid)
    show = [setting("GRADER_DATA")]
    if kind == "judge":
        show += [p for p in setting("GRADER_SHOW").split(os.pathsep) if p]
    network = setting("GRADER_NO_NETWORK") != "1"
    made = make_cgroups(f"{kind}-{os.getpid()}", _int("GRADER_MEMORY_MB"),
                        _int("GRADER_MAX_TASKS")) if as_root else []
    quiet = kind == "kernel" and setting("GRADER_DEBUG") != "1"
    env = dict(os.environ, GRADER_QUIET="1" if quiet else "0", GRADER_UID=str(uid))
    if _int("GRADER_MAX_TASKS"):
        env["GRADER_NPROC"] = str(tasks_of(uid if as_root else os.getuid()) + _int("GRADER_MAX_TASKS"))
    if BWRAP:
        full = bwrap_command(cmd, runtime=runtime, show=show, network=network, as_root=as_root)
    else:
        full = [sys.executable, os.path.realpath(__file__), "--inside", "--"] + cmd
        if as_root and not uid:
            return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # interrupts reach the kernel by message
    try:
        child = subprocess.Popen(full, env=env, stdin=None if kind == "judge" else subprocess.DEVNULL)
    except OSError as exc:
        print(f"kernel_launcher: could not start the sandbox: {exc}", file=sys.stderr)
        remove_cgroups(made)
        return 1

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        return child.wait()
    finally:
        remove_cgroups(made)


def tasks_of(uid):
    """Processes plus threads that `uid` has now (what RLIMIT_NPROC compares with)."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields.get("Threads", "1"))
        except (OSError, KeyError, ValueError):
            continue
    return count


def probe():
    """{limit: how it applies here} for the kernel sandbox."""
    report = {}
    as_root = os.geteuid() == 0
    why = can_use_bwrap(as_root)
    if why:
        report["sandbox"] = f"none: {why}"
    else:
        report["sandbox"] = "bubblewrap"
        report["processes"] = "own PID namespace (nothing else visible)"
        report["files"] = "only Python, the course data and its own runtime folder, read-only"
        report["network"] = "off" if setting("GRADER_NO_NETWORK") == "1" else "on"
        report["tmp"] = f"private /tmp, /dev/shm and HOME, {TMPFS_MB} MB each"
    apply_rlimits(report)
    if as_root:
        report["user"] = f"uid {_int('GRADER_UID')}" if _int("GRADER_UID") else "NOT SET"
        parents = _cgroup_parents()
        report["cgroup"] = (f"memory and tasks counted for the whole sandbox ({', '.join(sorted(parents))})"
                            if parents else "unavailable (per-process limits only)")
    else:
        report["user"] = "unchanged (the grader is not root)"
        report["cgroup"] = "unavailable (the grader is not root; per-process limits only)"
    return report


def main(argv):
    args = argv[1:]
    if args[:1] == ["--probe"]:
        print(json.dumps(probe()))
        return 0
    if args[:2] == ["--inside", "--"]:
        return inside(args[2:])
    if args[:1] in (["--kernel"], ["--judge"]) and len(args) > 1:
        kind, cmd, runtime = args[0][2:], args[1:], None
        if cmd[:1] == ["--runtime"] and len(cmd) > 2:
            runtime, cmd = cmd[1], cmd[2:]
        conn = cmd[cmd.index("-f") + 1] if "-f" in cmd[:-1] else None
        return start(cmd, kind, runtime, conn)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
