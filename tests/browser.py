"""Headless Chromium for the HTML-report test: Debian's ``chromium``, installed with apt-get when missing (as
root, like the SLURM test's packages), driven through Playwright's Python package with that executable (no
browser download)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class BrowserUnavailable(RuntimeError):
    """No Chromium here, and it cannot be installed."""


def chromium_executable() -> str:
    """Path of a Chromium executable, installing Debian's package first when there is none."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrowserUnavailable("chromium is not installed and apt-get cannot run as root here")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, check=False)
    install = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], env=env,
                             capture_output=True, text=True, check=False)
    found = shutil.which("chromium")
    if install.returncode != 0 or not found:
        raise BrowserUnavailable(f"apt-get install chromium failed:\n{install.stderr[-2000:]}")
    return found


@dataclass(frozen=True)
class RenderedReport:
    """What a Snakemake HTML report showed in the browser."""

    results: list[str]  #: paths of the results the report registers (the keys of its `results` object)
    listed: list[str]  #: result paths the report's pages displayed, after clicking each (sub)category
    images: list[str]  #: paths of image results the browser decoded (an <img> of the data URI, nonzero size)
    texts: dict[str, str]  #: the decoded content of each other result (markdown, YAML, TSV) by path
    errors: list[str]  #: console errors and uncaught page errors


def rendered_report(html: Path, screenshot: Path) -> RenderedReport:
    """Open ``html`` in headless Chromium, click through every result category and subcategory, decode every
    result, and save a screenshot of the first category's page."""
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            ready = "document.querySelector('#app') && document.querySelector('#app').innerText.length > 0"
            page.goto(html.as_uri())
            page.wait_for_function(ready, timeout=60_000)
            results = page.evaluate("Object.keys(results)")
            listed: set[str] = set()
            pages = [(category, subcategory) for category, subcategories in page.evaluate("categories").items()
                     for subcategory in subcategories]
            for number, (category, subcategory) in enumerate(sorted(pages)):
                if number:  # a category's page replaces the menu: start again from the report's front page
                    page.goto(html.as_uri())
                    page.wait_for_function(ready, timeout=60_000)
                page.locator("nav").get_by_text(category, exact=True).first.click()
                if sum(c == category for c, _ in pages) > 1:  # several subcategories: a list of them first
                    page.locator("nav").get_by_text(subcategory, exact=True).first.click()
                page.wait_for_timeout(200)
                text = page.inner_text("nav")
                listed |= {path for path in results if path in text}
                if number == 0:
                    page.screenshot(path=str(screenshot), full_page=True)
            images = page.evaluate("""async () => {
                const decoded = [];
                for (const [path, r] of Object.entries(results)) {
                    if (!r.mime_type.startsWith("image/")) continue;
                    const img = new Image();
                    img.src = r.data_uri;
                    try { await img.decode(); } catch (e) { continue; }
                    if (img.naturalWidth > 0 && img.naturalHeight > 0) decoded.push(path);
                }
                return decoded;
            }""")
            texts = page.evaluate("""async () => {
                const out = {};
                for (const [path, r] of Object.entries(results)) {
                    if (r.mime_type.startsWith("image/")) continue;
                    out[path] = await (await fetch(r.data_uri)).text();
                }
                return out;
            }""")
        finally:
            browser.close()
    return RenderedReport(results=results, listed=sorted(listed), images=images, texts=texts, errors=errors)
