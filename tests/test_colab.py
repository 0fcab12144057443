"""Colab readiness (fast, no browser): what a student who opens a notebook from GitHub in Google
Colab relies on (spec §1, §3).

- every student notebook starts with an "Open in Colab" badge to its own path, built from the one
  configured repository address (course.toml), and that address is spelled nowhere else;
- notebooks import only what Colab has: torch, torchvision, matplotlib, numpy, tqdm and the
  standard library — never nbgrader;
- with the repository's data/ absent, notebook 06's load_mnist downloads MNIST through
  torchvision (served here from data/MNIST/raw over HTTP on 127.0.0.1, no internet needed).
"""
import ast
import contextlib
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest

from grader import paths, release

ROOT = paths.ROOT
STUDENT = sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted(paths.SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
ALLOWED = {"torch", "torchvision", "matplotlib", "numpy", "tqdm"}
COLAB_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"


def read(path):
    return nbformat.read(path, as_version=4)


def rel(path):
    return Path(path).relative_to(ROOT).as_posix()


# ---------------------------------------------------------------- the badge and the one address

def test_there_are_student_notebooks():
    assert STUDENT, "notebooks/ holds no student notebook (run `python -m grader release`)"


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.stem)
def test_badge_opens_this_notebook_in_colab(path):
    name = path.stem
    repo, branch = paths.repository()
    url = release.colab_url(name)
    assert url == (f"https://colab.research.google.com/github/{repo}/blob/{branch}"
                   f"/notebooks/{name}.ipynb"), f"colab_url({name!r}) does not point at its own path"
    nb = read(path)
    badges = [c for c in nb.cells if release.BADGE_TAG in c.metadata.get("tags", [])]
    assert len(badges) == 1, f"{rel(path)}: expected one cell tagged {release.BADGE_TAG!r}, " \
                             f"found {len(badges)}"
    first = nb.cells[0]
    assert first is badges[0] and first.cell_type == "markdown", \
        f"{rel(path)}: the Colab badge must be the first cell (a markdown cell)"
    assert f"]({url})" in first.source, \
        f"{rel(path)}: the badge links somewhere else than {url}:\n{first.source}"
    assert f"[![Open In Colab]({COLAB_BADGE_SVG})]" in first.source, \
        f"{rel(path)}: the badge cell does not show Colab's badge image:\n{first.source}"


def repository_files():
    """Files of the repository: tracked and untracked-but-not-ignored (git), else a walk."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        files = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", "test-artifacts", "bench-results",
                ".whl", ".ipynb_checkpoints"}
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in skip]
            files += [Path(folder) / n for n in names]
    return [f for f in files if f.is_file() and not f.is_symlink()]


def test_repository_address_lives_only_in_course_toml():
    """The address is configured once (course.toml) and stamped into notebooks by release;
    a README, a test or a notebook's prose that spells it out would go stale when it moves."""
    repo, _ = paths.repository()
    needle = repo.lower().encode()
    assert needle.count(b"/") == 1, f"course.toml: github should be owner/name, not {repo!r}"
    offenders = []
    for f in repository_files():
        if f == paths.COURSE_TOML or f.suffix == ".gz":
            continue
        data = f.read_bytes()
        if needle not in data.lower():
            continue
        if f.parent == paths.NOTEBOOKS and f.suffix == ".ipynb":
            # generated notebooks: only in the badge cell that release stamps
            nb = read(f)
            cells = [c for c in nb.cells if repo.lower() in c.source.lower()
                     and release.BADGE_TAG not in c.metadata.get("tags", [])]
            offenders += [f"{rel(f)} (cell {c.get('id', '?')})" for c in cells]
            continue
        offenders.append(rel(f))
    assert not offenders, \
        f"the repository address {repo!r} is spelled out outside course.toml (read it with " \
        f"grader.paths.repository() / grader.release.colab_url instead): {offenders}"


# ---------------------------------------------------------------- imports Colab can satisfy

def imported_modules(source):
    """(top-level module, line) for every import in the code, including importlib/__import__
    calls with a literal name. Raises SyntaxError for code that is not plain Python."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if fname in ("import_module", "__import__"):
                found.append((node.args[0].value.split(".")[0], node.lineno))
    return found


def test_import_check_catches_what_it_should():
    """The checker itself: nbgrader, third-party and dynamic imports are all seen."""
    src = ("import os, numpy as np\nfrom nbgrader.api import Gradebook\nimport sklearn.metrics\n"
           "from . import x\nimport importlib\nimportlib.import_module('pandas')\n"
           "__import__('scipy.linalg')\n")
    mods = {m for m, _ in imported_modules(src)}
    assert mods == {"os", "numpy", "nbgrader", "sklearn", "importlib", "pandas", "scipy"}
    assert not_on_colab(mods) == ["nbgrader", "pandas", "scipy", "sklearn"]


def not_on_colab(modules):
    return sorted(m for m in set(modules) if m not in ALLOWED and m not in sys.stdlib_module_names)


@pytest.mark.parametrize("path", STUDENT + SOLUTIONS, ids=lambda p: rel(p))
def test_notebook_imports_only_what_colab_has(path):
    bad = []
    for i, cell in enumerate(read(path).cells):
        if cell.cell_type != "code":
            continue
        where = f"{rel(path)} cell {i} ({cell.get('id', '?')})"
        try:
            mods = imported_modules(cell.source)
        except SyntaxError as e:
            pytest.fail(f"{where} is not plain Python (no %magics or !shell lines): {e}")
        bad += [f"{where} line {line}: import {m}" for m, line in mods
                if m in not_on_colab([m])]
    assert not bad, "imports Colab may not have (allowed: " + ", ".join(sorted(ALLOWED)) + \
                    ", the standard library; never nbgrader):\n" + "\n".join(bad)


# ---------------------------------------------------------------- MNIST without data/

MNIST_RAW = paths.DATA / "MNIST" / "raw"
MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


@contextlib.contextmanager
def serve_folder(folder):
    """Serve `folder` over HTTP on 127.0.0.1 (free port) from a thread; yield (url, requests)."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):                          # remember what was downloaded
            requests.append(self.path)
            super().do_GET()

        def log_message(self, fmt, *args):        # silent
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_mnist_downloads_through_torchvision_when_data_is_absent(tmp_path, monkeypatch):
    """Colab has no data/ and no COURSE_DATA: notebook 06's setup cell and load_mnist, run in an
    empty folder, must download MNIST through torchvision into the root they are given."""
    import torchvision
    from grader import solution_code
    if not any(p.stem.startswith("06_") for p in SOLUTIONS):
        pytest.fail("solutions/07_mnist_row_by_row.ipynb is missing: load_mnist cannot be checked")
    for f in MNIST_FILES:
        assert (MNIST_RAW / f).is_file(), f"data/MNIST/raw/{f} is missing (the test serves it)"
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("COURSE_DATA", raising=False)       # as on Colab: no grader, no clone
    content = tmp_path / "content"                          # Colab's working folder, empty
    content.mkdir()
    monkeypatch.chdir(content)
    root = tmp_path / "colab"
    root.mkdir()
    with serve_folder(MNIST_RAW) as (url, requests):
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [url])
        monkeypatch.setattr(torchvision.datasets.MNIST, "resources",
                            [(f, md5(MNIST_RAW / f)) for f in MNIST_FILES])
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
                contextlib.redirect_stderr(quiet):
            load_mnist = solution_code.load("07_mnist_row_by_row")["load_mnist"]     # setup cell runs here
            train_x, train_y, test_x, test_y = load_mnist(root=str(root))
            explicit_requests = list(requests)
            wrote_elsewhere = sorted(p.name for p in content.iterdir())
            requests.clear()
            default_sizes = [len(t) for t in load_mnist()]    # what a Colab student runs
    # (torchvision opens each URL twice: once to follow redirects, once to fetch it)
    served = sorted({p.lstrip("/") for p in explicit_requests})
    assert served == sorted(MNIST_FILES), "load_mnist(root=<empty folder>) did not download the " \
        f"four MNIST files through torchvision's mirrors (GET requests seen: {explicit_requests})"
    assert (len(train_x), len(train_y), len(test_x), len(test_y)) == (60000, 60000, 10000, 10000)
    assert tuple(train_x.shape[-2:]) == (28, 28) and tuple(test_x.shape[-2:]) == (28, 28), \
        f"images should be 28×28, got {tuple(train_x.shape)}"
    assert train_x.is_floating_point() and test_x.is_floating_point(), "images should be float"
    assert set(train_y.unique().tolist()) == set(range(10)), "labels should be the digits 0–9"
    assert {p.name for p in (root / "MNIST" / "raw").iterdir()} >= set(MNIST_FILES), \
        f"the download did not land in {root}/MNIST/raw"
    assert not wrote_elsewhere, f"load_mnist(root=...) wrote into the working folder: {wrote_elsewhere}"

    # load_mnist() with no root, in a folder without data/ (Colab): downloads under ./data
    assert sorted({p.lstrip("/") for p in requests}) == sorted(MNIST_FILES), \
        f"load_mnist() in a folder without data/ did not download MNIST (GET requests: {requests})"
    assert default_sizes == [60000, 60000, 10000, 10000], f"load_mnist() sizes: {default_sizes}"
    landed = {p.name for p in content.rglob("*") if p.is_file()}
    assert landed >= set(MNIST_FILES), \
        f"load_mnist() did not download into the working folder (found {sorted(landed)})"
