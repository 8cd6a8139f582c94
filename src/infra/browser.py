"""A headless Chromium driven by Playwright, for the offline-plots test and the MLflow UI screenshots.

Playwright (the `dev` extra) drives the system's Chromium (Debian: `apt-get install chromium`) rather
than downloading its own: this machine has no internet but the Debian mirror. A browser that Playwright
installed itself (`playwright install chromium`) is used when there is no system one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

INSTALL_HINT = (
    "install a browser: `apt-get install -y chromium` (Debian/Ubuntu, as root) or "
    "`.venv/bin/playwright install chromium`; Playwright itself comes with `make install` (the dev extra)"
)

# No first-run UI, no update or sync traffic: the page under test makes the only requests.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in containers and CI has no user namespaces for the sandbox
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def system_chromium() -> str | None:
    """Path of the system's Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def why_no_browser() -> str | None:
    """None when `launch` can start a browser; otherwise one line saying what is missing and what to do."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return f"the Python package playwright is not installed; {INSTALL_HINT}"
    if system_chromium():
        return None
    with sync_playwright() as playwright:
        if Path(playwright.chromium.executable_path).is_file():
            return None
    return f"no Chromium found (looked for chromium, chromium-browser, google-chrome on PATH); {INSTALL_HINT}"


def launch(playwright: Playwright) -> Browser:
    """Start headless Chromium: the system's if there is one, else Playwright's own."""
    return playwright.chromium.launch(executable_path=system_chromium(), args=CHROMIUM_ARGS)
