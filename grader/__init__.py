"""The course's machinery: release, self-check, batch grading and benchmarks.

No notebook imports this package: every notebook stays self-contained so it runs on Colab.
"""
