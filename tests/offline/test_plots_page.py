"""`make plots` renders DVC's plots with vendored vega: in a browser that cannot reach the internet,
every chart draws and no request leaves for another host."""

from __future__ import annotations

import subprocess

from tests.support.browser import offline_chromium
from tests.support.processes import REPO_ROOT, subprocess_env

PLOTS = 5  # dvc.yaml declares ROC, PR, confusion, calibration and feature importance


def test_the_plots_page_draws_every_chart_offline(tmp_path):
    output = tmp_path / "plots"
    result = subprocess.run(
        ["make", "--no-print-directory", "plots", f"PLOTS_HTML={output}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page_html = (output / "index.html").read_text()
    assert "cdn.jsdelivr" not in page_html
    with offline_chromium(tmp_path) as page:
        drawn = "document.querySelectorAll('div[id] svg, div[id] canvas').length"
        visit = page.visit((output / "index.html").as_uri(), ready=f"{drawn} >= {PLOTS}")
        screenshot = page.screenshot(tmp_path / "plots.png")
    assert visit.foreign_hosts() == set(), visit.requests
    assert visit.errors == []
    assert screenshot.stat().st_size > 10_000, "a blank page"
