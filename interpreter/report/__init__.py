"""Reports: a run bundle rendered to one self-contained HTML page plus figure files for papers.

Layout: ``study`` (a forgiving view of the bundle) -> ``plots_merge`` / ``plots_extrap`` /
``sweeps`` / ``graph`` (figure handlers, registered with ``figures.figure``) and ``tables`` ->
``render`` (the template in ``mlspec.reports``). ``compare`` diffs two ``results.json`` files.

The record shapes each figure expects are documented in the docstrings of ``plots_merge`` and
``plots_extrap``; a record of any other shape is still shown, as a table of its scalars and JSON.
"""

from .compare import compare
from .figures import Figure, figure, study_figure
from .render import render_report

__all__ = ["Figure", "compare", "figure", "render_report", "study_figure"]
