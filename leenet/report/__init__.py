"""A run's results: their typed schema (``results.json``), the terminal summary, and ``report.html``.

Read a run and redraw its report::

    from leenet.report import read_results, write_report
    write_report(read_results("runs/my-run/results.json"), "runs/my-run")

Modules: :mod:`.results` (the schema, read and write), :mod:`.plots`, :mod:`.gallery` (the exit
gallery and its thumbnails file), :mod:`.html` (the page), :mod:`.text` (terminal lines).
"""

from leenet.report.common import slower_flag
from leenet.report.gallery import Thumbnails, gallery_from_outputs, read_gallery_file, write_gallery_file
from leenet.report.html import write_report
from leenet.report.results import SCHEMA_VERSION, Results, read_results, write_results
from leenet.report.text import speed_line, summary_table

__all__ = ["SCHEMA_VERSION", "Results", "Thumbnails", "gallery_from_outputs", "read_gallery_file", "read_results",
           "slower_flag", "speed_line", "summary_table", "write_gallery_file", "write_report", "write_results"]
