# nbgrader configuration for grading untrusted submissions (`python -m grader grade`): the
# course's nbgrader_config.py plus the sandboxed, guarded Execute preprocessor (grader/sandbox.py).
# An instructor running nbgrader by hand can pass this file with --config to get the same.
import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
load_subconfig(str(_here / "nbgrader_config.py"))  # noqa: F821  (injected by traitlets)
c = get_config()  # noqa: F821

if str(_here.parent) not in sys.path:
    sys.path.insert(0, str(_here.parent))

from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput, SaveAutoGrades)
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402

from nbgrader.preprocessors import ClearOutput, DeduplicateIds, OverwriteKernelspec  # noqa: E402

from grader.sandbox import GuardedExecute, RestoringOverwriteCells  # noqa: E402

# Deleted test cells come back from the source wherever they sat (see RestoringOverwriteCells).
c.Autograde.sanitize_preprocessors = [
    ClearOutput, DeduplicateIds, OverwriteKernelspec, RestoringOverwriteCells, CheckCellMetadata]
c.RestoringOverwriteCells.add_missing_cells = True

c.Autograde.autograde_preprocessors = [
    GuardedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
    AssignLatePenalties, CheckCellMetadata]
# GuardedExecute subclasses Execute, so c.Execute.* (timeout, ...) applies to it unchanged.
# A submission that breaks its own kernel (e.g. patches builtins.isinstance) must not make
# nbgrader abandon the notebook: missing output counts as a failed cell, the rest is graded.
c.GuardedExecute.raise_on_iopub_timeout = False
# Kernels start slowly on a loaded machine with --jobs workers: give them time.
c.GuardedExecute.startup_timeout = 180
