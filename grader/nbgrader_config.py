# nbgrader configuration for the course. nbgrader ignores --config and reads nbgrader_config.py
# from its working directory, so every grader command writes one there that loads this file
# (grader/course_dir.py). An instructor can copy it next to their own course directory.
c = get_config()  # noqa: F821  (injected by traitlets)

c.CourseDirectory.course_id = "inside-pytorch-rnn"

# Cell timeout: c.Execute.timeout overrides ExecutePreprocessor.timeout in nbgrader.
# MNIST (06) trains in its FAST mode under nbgrader; one cell may take about a minute on 2 cores.
c.Execute.timeout = 300
c.Execute.interrupt_on_timeout = True

# ANY stderr output in a test cell scores 0. Tests are written silent; this is the safety net for
# known harmless lines from the libraries (warnings, tqdm bars, torch's hardware notices).
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = (
    r"(?s)^\s*("
    r".*(UserWarning|DeprecationWarning|FutureWarning|RuntimeWarning|warnings\.warn).*"
    r"|.*Could not initialize NNPACK.*"
    r"|.*it/s\]\s*|.*s/it\]\s*"
    r")$"
)

# Students may delete or edit test cells: put them back from the source.
c.OverwriteCells.add_missing_cells = True

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
