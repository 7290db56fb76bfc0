"""The study report: built from smoke runs, every page and figure present, opens cleanly."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("book")]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [ch["file"] for ch in part["chapters"]]
    return files


def test_every_toc_page_is_built(smoke_book: dict[str, Path]) -> None:
    html = smoke_book["root"] / "_build" / "html"
    assert smoke_book["index"] == html / "index.html"
    missing = [f for f in _toc_files() if not (html / f"{f}.html").is_file()]
    assert missing == []


def test_every_referenced_image_exists(smoke_book: dict[str, Path]) -> None:
    html = smoke_book["root"] / "_build" / "html"
    n_images = {}
    for page in _toc_files():
        path = html / f"{page}.html"
        srcs = re.findall(r'<img[^>]+src="([^"]+)"', path.read_text())
        local = [s for s in srcs if not s.startswith(("http:", "https:", "data:"))]
        assert [s for s in local if not (path.parent / s).is_file()] == [], page
        n_images[page] = len(local)
    # the cohort page shows one overlay figure per center plus the distribution figure
    assert n_images["book/executed/00_cohort"] >= 4


def test_cohort_page_has_table1(smoke_book: dict[str, Path]) -> None:
    text = (smoke_book["root"] / "_build" / "html" / "book" / "executed" / "00_cohort.html").read_text()
    assert "Table 1" in text and "Fisher exact test" in text and "median test" in text
    # parameter cells are removed from the report
    assert "injected-parameters" not in text


def test_report_opens_in_headless_chromium(smoke_book: dict[str, Path]) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    html = smoke_book["root"] / "_build" / "html"
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            for page_name in ("index", "book/executed/00_cohort"):
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                page.on("console", lambda m, p=page_name: problems.append(f"{p}: {m.text}")
                        if m.type == "error" else None)
                page.on("pageerror", lambda e, p=page_name: problems.append(f"{p}: {e}"))
                page.goto((html / f"{page_name}.html").as_uri(), wait_until="load")
                shot = html / f"screenshot-{page_name.replace('/', '-')}.png"
                page.screenshot(path=str(shot), full_page=False)
                assert shot.stat().st_size > 10_000
                page.close()
        finally:
            browser.close()
    # Known upstream noise of jupyter-book 1's bundled theme scripts, not of our pages:
    # sphinx-thebe declares THEBE_JS_URL twice; the theme logs its colour-mode fallback.
    upstream = ("THEBE_JS_URL", "to auto.")
    assert [p for p in problems if not any(u in p for u in upstream)] == []
