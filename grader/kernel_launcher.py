"""Start a Jupyter kernel for student code with the grader's limits applied, then exec it.

    python kernel_launcher.py KERNEL_COMMAND ...     (what SandboxKernelManager runs)
    python kernel_launcher.py --probe                (print which limits this machine allows)

Standard library only: it runs before the kernel exists. Settings come from the environment
(set by `python -m grader grade` on the nbgrader process, which the kernel inherits):

    GRADER_MEMORY_MB   cap on the kernel's data segment (RLIMIT_DATA): a huge allocation becomes a
                       clean MemoryError/RuntimeError instead of taking the machine down. RLIMIT_DATA
                       rather than RLIMIT_AS: `import torch` needs ~3 GB of address space, not of data.
    GRADER_FILE_MB     largest file the kernel may write (RLIMIT_FSIZE)
    GRADER_NO_NETWORK  "1": a new, empty network namespace (unshare CLONE_NEWNET; as a normal user
                       with a user namespace too). Needs the ipc transport (SandboxKernelManager).
    GRADER_READONLY    os.pathsep-separated folders the kernel must not write (the repository, the
                       grading work folder with its gradebooks and other students' courses): a
                       private mount namespace where they are bind-mounted read-only, except the
                       kernel's own working folder and GRADER_WRITABLE folders (its HOME, ...).
    GRADER_USER        when started as root: also run the kernel as this user (default "nobody")
                       if that user can run this Python (not when it lives under /root).
    GRADER_KERNEL_HOMES a folder in which each kernel gets a new, empty HOME (and IPYTHONDIR,
                       MPLCONFIGDIR, XDG_CACHE_HOME, TMPDIR in it), its only writable place besides
                       its working folder: nothing an earlier kernel wrote there (IPython startup
                       files, a .pth in user site-packages, Jupyter config or kernelspecs that the
                       grader's own nbgrader would read) reaches a later kernel or the grader.

    GRADER_MAX_TASKS   processes and threads the kernel's user may have (RLIMIT_NPROC), counted
                       on top of those it has when the kernel starts: a fork bomb fails cleanly.

The kernel runs in a new PID namespace too, under a small init (this launcher, forked): when the
kernel ends or the launcher is killed, everything it started goes with the namespace (a daemon
that double-forked, a fork bomb), and nothing in it can signal processes outside (other kernels).

Every limit degrades gracefully: what the OS refuses is reported (--probe) and skipped. Except
one: a kernel that should drop from root to GRADER_USER and cannot is not started at all.
"""
import ctypes
import json
import os
import resource
import signal
import sys
import tempfile

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


def _unshare(flags):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _mount(source, target, flags):
    libc = ctypes.CDLL(None, use_errno=True)
    src = source.encode() if source else None
    if libc.mount(src, target.encode(), None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}: {os.strerror(ctypes.get_errno())}")


def readonly_mounts(readonly, writable):
    """In the current (private) mount namespace: `readonly` folders read-only, `writable` ones
    (inside them) writable again."""
    _mount(None, "/", MS_REC | MS_PRIVATE)
    for path in readonly:
        if path == "/":
            # The root file system itself, in this namespace only (separate mounts keep theirs).
            _mount(None, "/", MS_REMOUNT | MS_BIND | MS_RDONLY)
            continue
        _mount(path, path, MS_BIND | MS_REC)
        _mount(None, path, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for path in writable:
        # A bind mount copies the read-only flag of the mount it comes from: remount it rw.
        _mount(path, path, MS_BIND)
        _mount(None, path, MS_REMOUNT | MS_BIND)
    os.chdir(os.getcwd())  # the working folder through the new mounts


def isolate(network, mounts):
    """Enter new namespaces (network and/or mount); return how, or raise OSError."""
    flags = (CLONE_NEWNET if network else 0) | (CLONE_NEWNS if mounts else 0)
    try:
        _unshare(flags)
        return "namespaces"
    except OSError:
        uid, gid = os.getuid(), os.getgid()
        _unshare(CLONE_NEWUSER | flags)
        # Map our own ids so file permissions stay what they were.
        try:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        except OSError:
            pass
        return "user namespaces"


def _others_can_run(path):
    """True if a user other than the owner can execute `path` (every folder above it too)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        mode = os.stat(os.sep.join(parts[:i]) or os.sep).st_mode
        if not mode & 0o001:
            return False
    return True


def sandbox_user():
    """(uid, gid) to drop to, or None when not root / not wanted / unknown user."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("GRADER_USER", "nobody")
    if not name:
        return None
    try:
        import pwd
        entry = pwd.getpwnam(name)
    except (KeyError, ImportError):
        return None
    if not _others_can_run(sys.executable):
        return None
    return entry.pw_uid, entry.pw_gid


HOME_DIRS = {"IPYTHONDIR": ".ipython", "MPLCONFIGDIR": ".mpl", "XDG_CACHE_HOME": ".cache",
             "TMPDIR": "tmp"}


def fresh_home(ids):
    """A new, empty HOME under GRADER_KERNEL_HOMES, owned by the user the kernel will run as and
    set in the environment; return it, or None when GRADER_KERNEL_HOMES is unset."""
    parent = os.environ.get("GRADER_KERNEL_HOMES")
    if not parent:
        return None
    home = tempfile.mkdtemp(prefix="kernel-", dir=parent)
    made = [home]
    for var, sub in HOME_DIRS.items():
        made.append(os.path.join(home, sub))
        os.mkdir(made[-1], 0o700)
        os.environ[var] = made[-1]
    os.environ["HOME"] = home
    if ids is not None:
        for path in made:
            os.chown(path, *ids)
    return home


def apply_limits(connection_file=None):
    """Apply every configured limit; return {limit: 'on ...' | 'unavailable: why'}."""
    report = {}
    ids = sandbox_user()
    if ids is not None and connection_file:
        # Now: nbgrader may keep it in a folder that is read-only once the mounts are made.
        try:
            os.chown(connection_file, *ids)
        except OSError as exc:
            report["user"] = f"unchanged: connection file: {exc}"
            ids = None
    home = None
    try:
        home = fresh_home(ids)
        if home:
            report["home"] = "new and empty for each kernel"
    except OSError as exc:
        report["home"] = f"shared: {exc}"
    mem = int(os.environ.get("GRADER_MEMORY_MB", "0") or 0)
    if mem > 0:
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (mem << 20, mem << 20))
            report["memory"] = f"on ({mem} MB data segment)"
        except (ValueError, OSError) as exc:
            report["memory"] = f"unavailable: {exc}"
    fsize = int(os.environ.get("GRADER_FILE_MB", "0") or 0)
    if fsize > 0:
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize << 20, fsize << 20))
            report["file size"] = f"on ({fsize} MB)"
        except (ValueError, OSError) as exc:
            report["file size"] = f"unavailable: {exc}"
    network = os.environ.get("GRADER_NO_NETWORK") == "1"
    readonly = [p for p in os.environ.get("GRADER_READONLY", "").split(os.pathsep) if p]
    writable = [os.getcwd()] + ([home] if home else []) + [
        p for p in os.environ.get("GRADER_WRITABLE", "").split(os.pathsep) if p]
    try:
        how = isolate(network, bool(readonly))
        if network:
            report["network"] = f"off ({how})"
        if readonly:
            try:
                readonly_mounts(readonly, writable)
                report["files"] = "read-only outside its folder"
            except OSError as exc:
                report["files"] = f"unprotected: {exc}"
    except OSError as exc:
        if network:
            report["network"] = f"unavailable: {exc}"
        if readonly:
            report["files"] = f"unprotected: {exc}"
    try:
        _unshare(CLONE_NEWPID)
        report["processes"] = "own PID namespace"
    except OSError as exc:
        report["processes"] = f"shared PID namespace: {exc}"
    if ids is not None:
        uid, gid = ids
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            report["user"] = f"uid {uid}"
        except OSError as exc:
            report["user"] = f"unchanged: {exc}"
    tasks = int(os.environ.get("GRADER_MAX_TASKS", "0") or 0)
    if tasks > 0:
        # RLIMIT_NPROC counts every task of the (real) user: allow `tasks` more than it has now.
        limit = _tasks_of(os.getuid()) + tasks
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
            report["tasks"] = f"on ({tasks} more processes or threads)"
        except (ValueError, OSError) as exc:
            report["tasks"] = f"unavailable: {exc}"
    return report


def _tasks_of(uid):
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


def die_with_parent():
    """SIGKILL for this process when its parent dies (nbgrader killed for running over the
    grader's wall-clock limit; or, for the namespace's init, the launcher). Set after setuid,
    which clears it; survives exec."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass


def main(argv):
    if argv[1:] == ["--probe"]:
        print(json.dumps(apply_limits()))
        return 0
    cmd = argv[1:]
    if not cmd:
        print(__doc__, file=sys.stderr)
        return 2
    conn = None
    if "-f" in cmd and cmd.index("-f") + 1 < len(cmd):
        conn = cmd[cmd.index("-f") + 1]
    report = apply_limits(conn)
    if report.get("user", "").startswith("unchanged"):
        # Root in the kernel could undo every other limit (remount, raise rlimits): refuse.
        print(f"kernel_launcher: not starting the kernel as root: {report['user']}",
              file=sys.stderr)
        return 1
    die_with_parent()
    if report.get("processes") != "own PID namespace":
        os.execvp(cmd[0], cmd)
    return run_as_init(cmd)


FORWARD = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def run_as_init(cmd):
    """Fork pid 1 of the new PID namespace, which forks and execs the kernel, forwards signals
    to it and reaps orphans; exit with the kernel's status. Jupyter signals the process group
    (all three of us): SIGINT is the kernel's alone (an interrupt must arrive once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init = os.fork()
    if init == 0:
        die_with_parent()
        kernel = os.fork()
        if kernel == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # ipykernel would see its parent as pid 1 and take that for nbgrader having died;
            # the namespace takes care of that instead.
            os.environ.pop("JPY_PARENT_PID", None)
            try:
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        _forward_to(kernel)
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                os._exit(1)
            except InterruptedError:
                continue
            if pid == kernel:
                # Leaving kills whatever else is still in the namespace.
                os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _forward_to(init)
    while True:
        try:
            _, status = os.waitpid(init, 0)
            return os.waitstatus_to_exitcode(status) & 0xFF
        except InterruptedError:
            continue


def _forward_to(pid):
    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for signum in FORWARD:
        signal.signal(signum, forward)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
