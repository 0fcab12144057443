"""GPU figures from measurements/gpu.json, stamped into cells tagged `gpu-figures`.

Every GPU number the course states comes from the dated JSON that `python -m grader gpu-check`
wrote (format: measurements/README.md). A `gpu-figures` cell in solutions/ is a template in
`str.format` syntax over that JSON, then a line `<!-- no gpu figures -->`, then the text to show
when there is no measurement. `python -m grader release` calls `stamp(nb)` on every student
notebook; `render(template, data)` serves any other file.

Plain json, no nbformat: this module is imported by release and by the GPU check alike.
"""
import json
import math
import string
from pathlib import Path

TAG = "gpu-figures"
MARKER = "<!-- no gpu figures -->"
MEASUREMENTS = Path(__file__).resolve().parent.parent / "measurements" / "gpu.json"
DEFAULT_FALLBACK = ("No GPU figure has been measured for this notebook yet: `python -m grader gpu-check` "
                    "on a machine with a CUDA GPU writes them (measurements/README.md).")


class Missing(Exception):
    """A field the template names is absent, null, NaN or a skipped benchmark's."""


class _Strict(string.Formatter):
    def get_field(self, field_name, args, kwargs):
        try:
            value, key = super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError, AttributeError, TypeError) as err:
            raise Missing(field_name) from err
        if value is None or (isinstance(value, float) and not math.isfinite(value)) \
                or isinstance(value, (dict, list)):
            raise Missing(field_name)
        return value, key


def load(path=None):
    """The measurement as a dict, or None when there is none usable (no file, unreadable, a dry
    run, or no device/date/torch version)."""
    path = Path(path) if path is not None else MEASUREMENTS
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("dry_run") is not False:
        return None
    if not all(data.get(key) for key in ("device", "date", "torch")):
        return None
    data.setdefault("day", str(data["date"])[:10])
    return data


def split(source):
    """(template, fallback) of a gpu-figures cell's source."""
    template, sep, fallback = source.partition(MARKER)
    return template.strip(), (fallback.strip() if sep else DEFAULT_FALLBACK)


def render(source, data):
    """The text a gpu-figures cell shows: the template filled from `data`, or the fallback when
    `data` is None or lacks a field the template names."""
    template, fallback = split(source)
    if data is None:
        return fallback
    try:
        return _Strict().format(template, **data)
    except (Missing, ValueError):
        return fallback


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def stamp(nb, data=None, path=None):
    """Replace the source of every gpu-figures markdown cell of `nb` (a notebook dict) in place.
    `data` defaults to load(path). Returns the number of cells stamped.

    A stamped cell loses its nbgrader metadata: nbgrader checksums locked cells, and a stamped
    text is not the template that nbgrader saw (validate would report a changed cell, autograde
    would put the template back). As a plain markdown cell nbgrader leaves it alone."""
    if data is None:
        data = load(path)
    count = 0
    for cell in nb["cells"]:
        if cell.get("cell_type") == "markdown" and TAG in _tags(cell):
            source = cell["source"]
            cell["source"] = render("".join(source) if isinstance(source, list) else source, data)
            cell.get("metadata", {}).pop("nbgrader", None)
            count += 1
    return count
