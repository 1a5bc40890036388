"""The report in a real browser: headless Chromium opens a digits report with its exit gallery, logs no
console message, decodes every image, and draws a page that is not blank. Skipped without Chromium
(Debian: ``apt-get install chromium``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from report_fixtures import make_gallery_run

from leenet.report import read_results, write_report, write_results
from leenet.report.results import Results

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on PATH (apt-get install chromium)")
PROBE = """<!DOCTYPE html><html><body><iframe id="page" src="{url}" style="width:1280px;height:2000px"></iframe>
<script>
window.addEventListener("load", () => {{  // after the page and every image in it loaded
  const out = document.createElement("pre"), page = document.getElementById("page").contentDocument;
  const images = [...page.images];
  out.id = "probe";
  out.textContent = JSON.stringify({{widths: images.map(i => i.complete ? i.naturalWidth : -1),
                                    gallery: page.querySelectorAll("#gallery figure img").length}});
  document.body.appendChild(out);
}});
</script></body></html>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _probe(tmp_path: Path, page: Path) -> tuple[dict, list[str]]:
    """What the browser saw of ``page``: image widths and gallery thumbnails; and its console messages."""
    probe = tmp_path / f"probe-{page.stem}.html"
    probe.write_text(PROBE.format(url=page.resolve().as_uri()))
    done = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
    assert found, f"the probe did not run: {done.stderr[-2000:]}"
    return json.loads(found.group(1)), re.findall(r"CONSOLE[^\n]*", done.stderr)


def test_the_probe_catches_broken_images_and_console_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><img src='data:image/png;base64,AAAA'><script>console.error('boom')</script>")
    seen, console = _probe(tmp_path, bad)
    assert seen["widths"] == [0] and any("boom" in line for line in console)


def test_a_digits_report_loads_cleanly_in_chromium(tmp_path):
    run = tmp_path / "run"
    write_results(run / "results.json", Results.from_dict(make_gallery_run(run)))
    page = write_report(read_results(run / "results.json"), run)
    seen, console = _probe(tmp_path, page)
    assert console == [], console
    assert len(seen["widths"]) >= 4 + seen["gallery"] and min(seen["widths"]) > 0  # every image decodes
    assert seen["gallery"] > 12  # thumbnails in more than one row
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    pixels = imread(shot)[..., :3]
    ink = (pixels.min(-1) < 0.9).mean()  # share of pixels that are not (near) white
    assert pixels.shape[:2] == (2400, 1280) and 0.02 < ink < 0.9, ink
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50  # text, plots, colours
