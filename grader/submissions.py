"""Finding each student's notebooks in an LMS export, and reading them safely.

SUBMISSIONS is only ever read. Two shapes are understood:
- one folder per student (any depth inside it is searched): the folder's name is the student,
  minus an LMS suffix such as Moodle's "_assignsubmission_file_" (Moodle keeps the participant id
  in the name, so two students with one name stay two students);
- notebook files directly in SUBMISSIONS, as Canvas exports them
  ("doejane_[late_]12345_67890_01_gate_equations.ipynb"): the student is "doejane_12345", the
  name and the Canvas user id, so two students called Jane Doe stay two students.

A student's file goes to a notebook, best rule first: its exact name; a name that contains the
notebook's name once punctuation and case are ignored ("01-Gate-Equations (2).ipynb"); its
content (the nbgrader cell ids of that notebook, for an "Untitled.ipynb"). When several files
fit one notebook (a resubmission), the newest is graded (modification time, then the later
name), and the row says which file was graded and which were not.

`read_notebook` turns any file into a notebook nbgrader can grade, or a reason why not, without
ever raising: size, encoding, JSON nesting depth, nbformat 3 (upgraded), invalid metadata,
duplicated cells (JupyterLab keeps nbgrader's metadata on a copied or split cell), outputs
(dropped: the grader runs the notebook again).
"""
import hashlib
import json
import os
import re
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

LMS_SUFFIXES = ("_assignsubmission_file_", "_assignsubmission_onlinetext_", "_onlinetext_", "_file_")
SKIP_PARTS = {"__MACOSX", ".ipynb_checkpoints"}
MAX_BYTES = 50 << 20
MAX_CELLS = 5000           # the course's notebooks have about 100
MAX_DEPTH = 64
MAX_FILES = 2000          # files looked at per student folder


def normalize(text):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass
class Student:
    name: str
    files: list = field(default_factory=list)
    found: dict = field(default_factory=dict)      # assignment -> Path
    notes: dict = field(default_factory=dict)      # assignment -> text for the detail column
    problems: dict = field(default_factory=dict)   # assignment -> (status, detail)
    unmatched: list = field(default_factory=list)
    folder: str = ""                               # unique feedback folder name


def safe_folder(name):
    return re.sub(r"[^\w.@+-]+", "_", name).strip("._") or "student"


def assign_folders(students):
    """Give each student a feedback folder no other student shares, even on a file system that
    ignores case ("Jane Doe" and "Jane_Doe" both sanitise to Jane_Doe: the second gets a hash)."""
    taken = set()
    for s in sorted(students, key=lambda s: s.name):
        folder = safe_folder(s.name)
        if folder.lower() in taken or folder != s.name:
            candidate = folder if folder.lower() not in taken else \
                f"{folder}-{hashlib.sha1(s.name.encode()).hexdigest()[:8]}"
            folder = candidate
        while folder.lower() in taken:
            folder += "_"
        taken.add(folder.lower())
        s.folder = folder


def _regular(path):
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)


def _visible_files(folder):
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_PARTS)
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = Path(root) / name
            if _regular(p):
                out.append(p)
            if len(out) >= MAX_FILES:
                return out
    return out


def _order_key(path):
    """Newest first: modification time, then a resubmission suffix such as "-2" or " (3)"."""
    try:
        mtime = os.lstat(path).st_mtime
    except OSError:
        mtime = 0.0
    m = re.search(r"(?:-|\s\()(\d+)\)?$", path.stem)
    return (mtime, int(m.group(1)) if m else 0, path.name)


def _notebook_of(f, assignments):
    """The notebook a file is named after: its exact name, else the one notebook whose name
    (punctuation and case ignored) it contains; None when neither says."""
    for a in assignments:
        if f.name == f"{a}.ipynb":
            return a
    hits = [a for a in assignments if normalize(a) in normalize(f.stem)]
    return max(hits, key=len) if hits else None


def match_files(files, assignments, source_ids):
    """({assignment: path}, {assignment: note}, {assignment: (status, detail)}, unmatched).
    Of several files for one notebook, the newest is graded; the note names the others."""
    notebooks = [f for f in files if f.suffix.lower() == ".ipynb"]
    candidates = {a: [] for a in assignments}
    used = set()
    for f in notebooks:
        a = _notebook_of(f, assignments)
        if a is not None:
            candidates[a].append(f)
            used.add(f)
    for f in [f for f in notebooks if f not in used]:
        ids = grade_ids(f)
        owners = [a for a in assignments if not candidates[a]
                  and len(ids & source_ids.get(a, set())) >= max(1, len(source_ids.get(a, ())) // 2)]
        if len(owners) == 1:
            candidates[owners[0]].append(f)
            used.add(f)
    found, notes, problems = {}, {}, {}
    for a in assignments:
        hits = sorted(candidates[a], key=_order_key, reverse=True)
        if not hits:
            problems[a] = ("missing", "no file for this notebook")
            continue
        found[a] = hits[0]
        if hits[0].name != f"{a}.ipynb":
            notes[a] = hits[0].name
        if len(hits) > 1:
            notes[a] = (f"graded {hits[0].name}, the newest of {len(hits)} files for this "
                        f"notebook (not graded: {', '.join(h.name for h in hits[1:][:5])})")
    unmatched = [f for f in files if f not in used]
    return found, notes, problems, unmatched


FLAT = re.compile(r"^(?P<name>.+?)_(?:late_)?(?P<uid>\d+)_(?:\d+_)?(?P<rest>.+)$")


def flat_student(stem, assignments):
    """The student of a Canvas-style flat file name ("name_[late_]uid_subid_file"), or None."""
    m = FLAT.match(stem)
    if m and normalize(m.group("name")):
        return f"{m.group('name')}_{m.group('uid')}"
    norm = normalize(stem)
    for a in assignments:
        pos = norm.find(normalize(a))
        if pos > 0:
            tokens = [t for t in norm[:pos].split("_") if t and t != "late"]
            if tokens:
                return "_".join(tokens)
    return None


def discover(root, assignments, source_ids):
    """(students sorted by name, warnings). Raises FileNotFoundError/NotADirectoryError."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(root)
    if not root.is_dir():
        raise NotADirectoryError(root)
    students, warnings = {}, []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name in SKIP_PARTS or entry.is_symlink():
            continue
        if entry.is_dir():
            name = entry.name
            for suffix in LMS_SUFFIXES:
                if name.endswith(suffix) and len(name) > len(suffix):
                    name = name[: -len(suffix)]
                    break
            students.setdefault(name, Student(name)).files.extend(_visible_files(entry))
        elif _regular(entry):
            name = flat_student(entry.stem, assignments)
            if name is None:
                warnings.append(f"ignored {entry.name}: a file at the top level must be named "
                                f"<student>_..._<notebook>.ipynb (or put it in a folder per student)")
                continue
            students.setdefault(name, Student(name)).files.append(entry)
    for student in students.values():
        student.found, student.notes, student.problems, student.unmatched = match_files(
            student.files, assignments, source_ids)
        if student.unmatched:
            names = ", ".join(str(f.name) for f in student.unmatched[:5])
            for a, (status, detail) in student.problems.items():
                if status == "missing":
                    student.problems[a] = (status, f"{detail} (unmatched files: {names})")
    found = [students[k] for k in sorted(students)]
    assign_folders(found)
    return found, warnings


# ---------------------------------------------------------------------------- reading safely

def read_bytes(path, limit=MAX_BYTES):
    """The file's bytes, never following a symbolic link; None if it is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                return b"\0" * (limit + 1)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


_TOKENS = re.compile(rb'["\\\[\]{}]')


def json_depth(data):
    """How deeply JSON text nests ([ and { outside strings), without recursion."""
    depth = deepest = 0
    in_string = False
    for m in _TOKENS.finditer(data):
        ch = m.group()
        if ch == b"\\":
            continue
        if ch == b'"':
            if not _preceded_by_escape(data, m.start()):
                in_string = not in_string
            continue
        if in_string:
            continue
        if ch in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _preceded_by_escape(data, pos):
    n = 0
    while pos - 1 - n >= 0 and data[pos - 1 - n] == 0x5C:
        n += 1
    return n % 2 == 1


def grade_ids(path):
    """nbgrader grade ids in a file, or an empty set if it is not a readable notebook."""
    nb, _ = read_notebook(path)
    if nb is None:
        return set()
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            for c in nb.cells} - {None}


def read_notebook(path, known_ids=None):
    """(notebook ready for nbgrader, None) or (None, why it cannot be graded). Never raises.
    `known_ids`: the source notebook's grade ids; nbgrader metadata naming any other id (an
    older release, a hand-made cell) is dropped, so nbgrader treats that cell as the student's."""
    try:
        return _read_notebook(path, known_ids)
    except RecursionError:
        return None, "not a notebook (nested too deeply)"
    except Exception as exc:  # noqa: BLE001 - any other surprise is the file's, not ours
        return None, f"not a valid notebook ({type(exc).__name__}: {str(exc)[:150]})"


def _read_notebook(path, known_ids):
    import nbformat
    data = read_bytes(path)
    if data is None:
        return None, "not a regular file"
    if len(data) > MAX_BYTES:
        return None, f"larger than {MAX_BYTES >> 20} MB"
    if not data.strip():
        return None, "empty file"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not a notebook (not UTF-8 text)"
    depth = json_depth(data)
    if depth > MAX_DEPTH:
        return None, f"not a notebook (JSON nested {depth} levels deep)"
    try:
        raw = json.loads(text)
    except ValueError as exc:
        return None, f"not a notebook (invalid JSON: {str(exc)[:150]})"
    if not isinstance(raw, dict) or not ("cells" in raw or "worksheets" in raw):
        return None, "not a notebook (JSON without cells)"
    cells = raw.get("cells") if "cells" in raw else [
        c for w in raw.get("worksheets") or [] if isinstance(w, dict) for c in w.get("cells") or []]
    if isinstance(cells, list) and len(cells) > MAX_CELLS:
        # nbformat's validation would take minutes of the main process for such a file.
        return None, f"not a course notebook ({len(cells)} cells; the limit is {MAX_CELLS})"
    nb = nbformat.reads(text, as_version=4)
    return clean(nb, known_ids), None


def clean(nb, known_ids=None):
    """What nbgrader needs and nothing else: outputs dropped, one cell per grade id, unique cell
    ids, nbgrader metadata well-formed or removed, a valid nbformat 4 notebook."""
    import nbformat
    nb.nbformat, nb.nbformat_minor = 4, 5
    cells = []
    for cell in nb.get("cells", []):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            continue
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(s for s in source if isinstance(s, str))
        if not isinstance(source, str):
            source = ""
        meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        keep = {}
        nbg = meta.get("nbgrader")
        if isinstance(nbg, dict) and isinstance(nbg.get("grade_id"), str):
            keep["nbgrader"] = {k: v for k, v in nbg.items() if isinstance(k, str)
                                and isinstance(v, (str, int, float, bool))}
        for k in ("tags", "jupyter", "collapsed", "editable", "deletable"):
            if k in meta and isinstance(meta[k], (list, dict, bool)):
                keep[k] = meta[k]
        if cell["cell_type"] == "code":
            new = nbformat.v4.new_code_cell(source, metadata=keep)
        elif cell["cell_type"] == "markdown":
            new = nbformat.v4.new_markdown_cell(source, metadata=keep)
        else:
            new = nbformat.v4.new_raw_cell(source, metadata=keep)
        cells.append(new)
    seen = set()
    for cell in cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid is not None:
            if gid in seen or (known_ids is not None and gid not in known_ids):
                del cell.metadata["nbgrader"]    # a copied or split cell: plain code now
            seen.add(gid)
        cell.id = uuid.uuid4().hex[:12]
    out = nbformat.v4.new_notebook()
    out.cells = cells
    out.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                   "name": "python3"},
                    "language_info": {"name": "python"}}
    nbformat.validate(out)
    return out
