"""The study report: built from smoke runs, every page and figure present, opens cleanly."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pandas as pd
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


def _text(html_fragment: str) -> str:
    """Visible text of an HTML fragment (tags dropped, entities decoded, whitespace collapsed)."""
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", html_fragment, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


def _tables(page: str) -> list[str]:
    return [_text(t) for t in re.findall(r"<table.*?</table>", page, flags=re.S)]


def test_cohort_page_has_table1(smoke_book: dict[str, Path]) -> None:
    """The rendered page holds Table 1 as computed from the cohort, cell by cell."""
    from msutils import stats
    from msutils.data.cohort import first_session, load_cohort

    page = (smoke_book["root"] / "_build" / "html" / "book" / "executed" / "00_cohort.html").read_text()
    assert "Table 1" in page and "injected-parameters" not in page  # parameter cells are removed
    summary = json.loads((smoke_book["out"] / "00_cohort" / "summary.json").read_text())
    cohort = load_cohort(summary["manifest"], check_images=False)
    subjects = first_session(cohort.table)
    expected = stats.format_table1(stats.table1(
        subjects, "center", {"age": "continuous", "sex": "categorical", "group": "categorical"}, seed=0))
    table = next((t for t in _tables(page) if "age, mean (SD)" in t), None)
    assert table is not None, "no rendered table with the 'age, mean (SD)' row"
    cells = [str(c) for c in expected.to_numpy().ravel() if str(c)] + list(expected.columns) + list(expected.index)
    missing = [c for c in cells if " ".join(c.split()) not in table]
    assert missing == [], missing
    assert "Fisher exact test" in table
    # the numbers are the cohort's: e.g. the subjects per center of the summary in the column heads
    n_center = pd.Series(summary["subjects_per_center_group"]).groupby(lambda k: k.split("/")[0]).sum()
    assert all(f"{c} (n={n})" in table for c, n in n_center.items())


#: What a log record looks like in a page: ``12:00:01 msutils.x...`` or ``msutils.x INFO`` / ``INFO:msutils.x``.
LOG_RECORD = re.compile(r"\b\d{2}:\d{2}:\d{2}(?:,\d+)?\s+(?:\w+\s+)?msutils(?:\.\w+)*\b"
                        r"|\bmsutils(?:\.\w+)*:?\s+(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\b"
                        r"|\b(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):msutils\b")


#: A progress line (msutils.core.progress.Progress): ``radiomics: 3/52 scans (12.0 s)`` or ``(1:05)``.
PROGRESS_LINE = re.compile(r"\b[\w -]+: \d+/\d+(?: \w+)? \((?:\d+\.\d s|\d+:\d\d)\)")


def test_log_record_pattern_catches_the_formats() -> None:
    import logging

    from msutils.core.progress import LOG_FORMAT, PROGRESS_LOGGER, Progress

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger(PROGRESS_LOGGER)
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        with Progress("radiomics", total=2, unit="scans") as bar:
            bar.update(2)
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    lines = [logging.Formatter(LOG_FORMAT, "%H:%M:%S").format(r) for r in records]
    assert lines and all(PROGRESS_LINE.search(x) and LOG_RECORD.search(x) for x in lines), lines
    for line in ("radiomics: 3/52 scans (12.0 s)", "ICC re-processing: 10/10 scans (1:05)", "t: 1/2 (0.0 s)"):
        assert PROGRESS_LINE.search(line), line
    for line in ("11:40:37 msutils.data.manifest_checks: read voxel data of 50/1095 files",
                 "12:00:43 msutils.pipeline.runner INFO: 02: running 3 of 3 folds",
                 "2026-11-30 12:00:51,915 INFO msutils.pipeline.runner: started",
                 "msutils.progress INFO: radiomics: 3/10 scans", "WARNING:msutils.cache:stale"):
        assert LOG_RECORD.search(line), line
    for prose in ("the engine (msutils.features.radiomics.PARAMS) bins", "see `msutils.studies.flair_nnunet`."):
        assert not LOG_RECORD.search(prose), prose


def test_no_page_shows_a_log_record_or_progress(smoke_book: dict[str, Path]) -> None:
    html_dir = smoke_book["root"] / "_build" / "html"
    problems = {}
    for page in _toc_files():
        text = _text((html_dir / f"{page}.html").read_text())
        found = LOG_RECORD.findall(text) + PROGRESS_LINE.findall(text)
        if found:
            problems[page] = found[:3]
    assert problems == {}
    # and the executed notebooks carry no stderr stream (log handlers, warnings, progress bars)
    for nb_path in (smoke_book["root"] / "book" / "executed").glob("*.ipynb"):
        nb = json.loads(nb_path.read_text())
        stderr = [o for c in nb["cells"] for o in c.get("outputs", [])
                  if o.get("output_type") == "stream" and o.get("name") == "stderr"]
        assert stderr == [], (nb_path.name, stderr[:2])


def test_pages_load_no_script_from_the_network(smoke_book: dict[str, Path]) -> None:
    """The report reads offline: no page pulls a script from a CDN (MathJax is the usual one)."""
    html_dir = smoke_book["root"] / "_build" / "html"
    remote = {page: re.findall(r'<script[^>]*\bsrc="(?:https?:)?//[^"]*"', (html_dir / f"{page}.html").read_text())
              for page in _toc_files()}
    assert {page: tags for page, tags in remote.items() if tags} == {}


def _screenshot(page, path: Path, tries: int = 4) -> None:
    """Save a viewport screenshot, asking again when Chromium refuses one capture.

    Headless Chromium sometimes answers ``Page.captureScreenshot`` with "Unable to
    capture screenshot" (no frame composited yet, typically the first capture after a
    cold start on a loaded machine) and takes the same picture when asked again; the
    fresh-clone CI run failed once on exactly that. Any other error is raised at once.
    """
    from playwright.sync_api import Error

    for attempt in range(tries):
        try:
            page.screenshot(path=str(path), full_page=False)
            return
        except Error as err:
            if "Unable to capture screenshot" not in str(err) or attempt == tries - 1:
                raise
            page.wait_for_timeout(1000 * (attempt + 1))


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
                _screenshot(page, shot)
                assert shot.stat().st_size > 10_000
                page.close()
        finally:
            browser.close()
    # Known upstream noise of jupyter-book 1's bundled theme scripts, not of our pages:
    # sphinx-thebe declares THEBE_JS_URL twice; the theme logs its colour-mode fallback.
    upstream = ("THEBE_JS_URL", "to auto.")
    assert [p for p in problems if not any(u in p for u in upstream)] == []
