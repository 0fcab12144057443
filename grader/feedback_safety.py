"""Feedback HTML that runs none of the student's markup.

Whoever opens a feedback file (a TA, an LMS that shows it inline) must not run a student's script.
nbconvert's `sanitize_html` cleans outputs and drops JavaScript ones, but nbgrader's feedback
template renders markdown cells raw; so a markdown cell that is not one of the course's own is
shown as plain text here, before the template sees it.
"""
import html
import os

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor


class StudentMarkdownAsText(NbGraderPreprocessor):
    """Markdown cells whose source is not in the course's source notebook become escaped text."""

    def preprocess(self, nb, resources):
        trusted = self._course_markdown(resources)
        for cell in nb.cells:
            if cell.cell_type == "markdown" and cell.source not in trusted:
                text = html.escape(cell.source)
                cell.source = f"<pre>{text}</pre>" if text.strip() else ""
                cell.attachments = {}
        return nb, resources

    def _course_markdown(self, resources):
        info = (resources or {}).get("nbgrader", {})
        root = self.config.get("CourseDirectory", {}).get("root") or os.getcwd()
        try:
            path = os.path.join(root, "source", info["assignment"], f"{info['notebook']}.ipynb")
            source = nbformat.read(path, as_version=4)
        except (KeyError, OSError, ValueError):
            return set()            # no source to compare with: every markdown cell is text
        return {c.source for c in source.cells if c.cell_type == "markdown"}
