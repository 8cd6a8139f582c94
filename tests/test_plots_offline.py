"""`make plots` renders with no network: the real `dvc plots show` on the committed reports, opened in a
real headless Chromium with every request but the local files aborted."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from src.infra.browser import launch, why_no_browser

ROOT = Path(__file__).resolve().parent.parent
DVC = str(Path(sys.executable).with_name("dvc"))
TEMPLATE = ".dvc/plots/offline.html"

pytestmark = pytest.mark.slow

_no_browser = why_no_browser()
needs_browser = pytest.mark.skipif(_no_browser is not None, reason=f"no headless browser: {_no_browser}")


def plots_show(out: Path, *args: str) -> Path:
    """Run `dvc plots show` on the project (reads the committed reports, writes only under `out`)."""
    subprocess.run(
        [DVC, "plots", "show", "-o", str(out), *args], cwd=ROOT, check=True, capture_output=True, timeout=120
    )
    return out / "index.html"


def open_offline(page_path: Path, draw_timeout_ms: int = 15_000) -> dict:
    """Open the page with all non-file requests aborted; report what drew, what was blocked, what errored."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    html = page_path.read_text(encoding="utf-8")
    vega_ids = re.findall(r"vegaEmbed\('#([^']+)'", html)  # one per data-series plot in dvc.yaml
    image_ids = re.findall(r'<div\s+id="([^"]+)"', html)  # DVC's image plots (PNGs)
    blocked: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()

            def only_local_files(route) -> None:
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local_files)
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(page_path.as_uri(), wait_until="load", timeout=30_000)
            # vega-embed draws asynchronously after load: wait (bounded) until every vega div holds a chart.
            drawn = "ids => ids.every(id => document.getElementById(id)?.querySelector('svg, canvas'))"
            with contextlib.suppress(PlaywrightTimeout):  # the assertions below say which plot is missing
                page.wait_for_function(drawn, arg=vega_ids, timeout=draw_timeout_ms)
            plots = page.evaluate(
                """([vegaIds, imageIds]) => ({
                    vega: vegaIds.map(id => [id, !!document.getElementById(id)?.querySelector('svg, canvas')]),
                    images: imageIds.map(id => [id, [...document.getElementById(id).querySelectorAll('img')]
                        .every(img => img.complete && img.naturalWidth > 0)]),
                })""",
                [vega_ids, image_ids],
            )
        finally:
            browser.close()
    return {**plots, "blocked": blocked, "errors": errors}


@needs_browser
def test_make_plots_page_draws_every_plot_with_the_network_blocked(tmp_path):
    page = plots_show(tmp_path / "plots", "--html-template", TEMPLATE)  # what `make plots` runs
    html = page.read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "<script src=" not in html

    seen = open_offline(page)

    # dvc.yaml defines a confusion matrix per optimizer and the curves (vega), plus two PNGs
    assert len(seen["vega"]) >= 4, seen
    assert all(drew for _, drew in seen["vega"]), f"plots that did not draw: {seen['vega']}"
    assert len(seen["images"]) >= 2 and all(loaded for _, loaded in seen["images"]), seen["images"]
    assert seen["errors"] == [], seen["errors"]
    assert seen["blocked"] == [], f"the page asked the network for {seen['blocked']}"


@needs_browser
def test_plain_dvc_plots_show_uses_the_offline_template_and_the_cdn_page_would_be_blank(tmp_path):
    # .dvc/config names the template, so a bare `dvc plots show` writes the same page as `make plots`
    plain = plots_show(tmp_path / "plain")
    explicit = plots_show(tmp_path / "explicit", "--html-template", TEMPLATE)
    assert plain.read_text(encoding="utf-8") == explicit.read_text(encoding="utf-8")

    # Control: DVC's own page (libraries from the CDN) draws nothing offline, so the check above can fail.
    from dvc_render.html import PAGE_HTML

    cdn_template = tmp_path / "cdn.html"
    cdn_template.write_text(PAGE_HTML, encoding="utf-8")
    seen = open_offline(plots_show(tmp_path / "cdn", "--html-template", str(cdn_template)), draw_timeout_ms=2_000)
    assert any("cdn.jsdelivr.net" in url for url in seen["blocked"]), seen["blocked"]
    assert not any(drew for _, drew in seen["vega"]), seen["vega"]
    assert seen["errors"], "vegaEmbed is undefined without its script: the page should log errors"


def test_screenshot_script_without_a_browser_says_how_to_install_one(tmp_path):
    # PATH without any chromium, and an empty folder where Playwright keeps the browsers it installs itself
    env = {"PATH": str(Path(sys.executable).parent), "PLAYWRIGHT_BROWSERS_PATH": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "docs.screenshots", "--out", str(tmp_path / "img")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "apt-get install -y chromium" in result.stderr and "playwright install chromium" in result.stderr
    assert not (tmp_path / "img").exists()
