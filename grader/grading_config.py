# nbgrader configuration for grading untrusted notebooks (`python -m grader grade`): the course's
# nbgrader_config.py, plus: student code runs in a sandboxed kernel (grader/sandbox.py,
# grader/kernel_launcher.py) and the tests run in the judge (grader/judged_execute.py,
# grader/judge.py), a process that never runs student code. It needs the environment that
# `grader grade` sets (GRADER_* variables); see GRADING_SECURITY.md.
import os
import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
load_subconfig(str(_here / "nbgrader_config.py"))  # noqa: F821  (injected by traitlets)
c = get_config()  # noqa: F821

if str(_here.parent) not in sys.path:
    sys.path.insert(0, str(_here.parent))

from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds, IgnorePattern,
    LimitOutput, OverwriteKernelspec, SaveAutoGrades)
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402

from grader.judged_execute import JudgedExecute  # noqa: E402
from grader.sandbox import LAUNCHER, RestoringOverwriteCells  # noqa: E402

# Deleted test cells come back from the source wherever they sat (see RestoringOverwriteCells).
c.Autograde.sanitize_preprocessors = [
    ClearOutput, DeduplicateIds, OverwriteKernelspec, RestoringOverwriteCells, CheckCellMetadata]
c.RestoringOverwriteCells.add_missing_cells = True

c.Autograde.autograde_preprocessors = [
    JudgedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
    AssignLatePenalties, CheckCellMetadata]
# JudgedExecute subclasses nbgrader's Execute, so c.Execute.* (timeout, ...) applies unchanged.
c.JudgedExecute.sandboxed = True
c.JudgedExecute.judge_command = [sys.executable, str(LAUNCHER), "--judge",
                                 sys.executable, "-m", "grader.judge"]
# A submission that breaks its own kernel must not make nbgrader abandon the notebook.
c.JudgedExecute.raise_on_iopub_timeout = False
# Kernels start slowly on a loaded machine with --jobs workers: give them time.
c.JudgedExecute.startup_timeout = 180

# Feedback shows each grade cell's visible tests, its score and the failure message; the hidden
# tests' code stays out of it (nbgrader#917) unless the instructor asks for it.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import ClearHiddenTests, GetGrades  # noqa: E402

from grader.feedback_safety import StudentMarkdownAsText  # noqa: E402

if os.environ.get("GRADER_FEEDBACK_HIDDEN") != "1":
    c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, StudentMarkdownAsText,
                                        CSSHTMLHeaderPreprocessor]
else:
    c.GenerateFeedback.preprocessors = [GetGrades, StudentMarkdownAsText, CSSHTMLHeaderPreprocessor]
# No script of a student's runs where the feedback is opened (see grader/feedback_safety.py).
c.HTMLExporter.sanitize_html = True
