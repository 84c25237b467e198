"""The self-contained HTML report in a real browser (headless Chromium through Selenium).

Skipped where Selenium, ``/usr/bin/chromium`` or ``chromedriver`` is missing. Two reports, each built
once: from ``infoprobe demo`` results with ``infoprobe.htmlreport.write_report``, and the one
``infoprobe analyze`` writes for a residual CNN; every test reads each through a ``file://`` URI, with
no network.

Screenshots at 1280 and 400 px wide go to ``$INFOPROBE_SCREENSHOTS`` (default: the test's tmp folder).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: The reports tested, and the sections each must have: the demo's, and ``infoprobe analyze`` of
#: a residual CNN on 300 samples in half a minute (too little for modules, which it says it skipped).
SECTIONS = {"demo": ("importance", "ablation", "synergy", "modules", "frivolous", "flow", "check"),
            "analyze": ("analyze", "importance", "ablation", "synergy", "frivolous")}
WIDTHS = (1280, 400)
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def browser_paths():
    """(chromium, chromedriver), or every test here is skipped before the demo runs."""
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                             else None)
    if driver is None:
        pytest.skip("chromedriver is absent (apt-get install chromium-driver)")
    return CHROMIUM, Path(driver)


@pytest.fixture(scope="session")
def demo_results(browser_paths, tmp_path_factory):
    """A folder of ``infoprobe demo`` results (about 40 s; once per session)."""
    from click.testing import CliRunner

    from infoprobe.cli.main import cli

    d = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(cli, ["demo", "--out", str(d), "--steps", "6", "--random-repeats", "2",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    return d


@pytest.fixture(scope="session", params=list(SECTIONS))
def report(request, browser_paths, tmp_path_factory):
    """The report under test and its kind: the demo's results' report, written away from the
    results it shows; or the one ``infoprobe analyze`` writes itself."""
    from click.testing import CliRunner

    from infoprobe.cli.main import cli
    from infoprobe.htmlreport import write_report

    if request.param == "demo":
        out = tmp_path_factory.mktemp("report") / "report.html"
        write_report([request.getfixturevalue("demo_results")], out)
    else:
        from test_analyze_budget import BASE, cli_with

        d = tmp_path_factory.mktemp("analyze")
        fix = Path(__file__).resolve().parent.parent / "fixtures"
        with pytest.MonkeyPatch.context() as mp:
            # fixed throughputs and a fake clock, the same plan on any machine: a clustering of
            # 50 s leaves modules out of half a minute
            cli_with(mp, dict(BASE, clustering=50.0))
            result = CliRunner().invoke(cli, ["analyze", str(fix / "zoo_resnet.onnx"), "--data",
                                              str(fix / "mnist_demo.npz"), "--split", "test", "--limit", "300",
                                              "--budget", "0.5", "--out", str(d), "--no-progress"])
        assert result.exit_code == 0, result.output
        assert "modules" in result.output and "skipped" in result.output
        out = d / "report.html"
    assert out.is_file() and out.stat().st_size > 0
    return request.param, out


@pytest.fixture(scope="module")
def driver(browser_paths, tmp_path_factory):
    """One headless Chromium for the module, with its console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=options, service=Service(executable_path=str(chromedriver)))
    try:
        drv.set_window_size(1280, 900)
        yield drv
    finally:
        drv.quit()


@pytest.fixture
def page(driver, report):
    """The report freshly loaded at 1280 x 900, its console log emptied of earlier pages' lines."""
    driver.set_window_size(1280, 900)
    driver.get_log("browser")
    driver.get(report[1].as_uri())
    driver.report_kind = report[0]
    return driver


def severe(driver) -> list[str]:
    """Console entries at level SEVERE since the last read (reading empties the log)."""
    return [f"{e.get('source', '')}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# --------------------------------------------------------------------------------------------------
# headline numbers


_NUMBER = re.compile(r"^([+-]?)(\d+(?:\.(\d+))?)(?:[eE]([+-]?\d+))?(%?)$")


def parse_shown(text: str) -> tuple[float, float]:
    """(value, half a unit in the last place shown) of a number formatted for reading.

    Accepts a leading sign (also U+2212), thousands separators (',' and thin or no-break spaces), an
    exponent, and a trailing '%' (the value is then divided by 100).
    """
    s = text.strip().replace("\u2212", "-").replace("\u2013", "-")
    for sep in (",", "\u202f", "\u2009", "\u00a0", " "):
        s = s.replace(sep, "")
    m = _NUMBER.match(s)
    if m is None:
        raise ValueError(f"not a number as shown: {text!r}")
    sign, digits, decimals, exponent, percent = m.groups()
    value = float(digits) * (-1 if sign == "-" else 1)
    half_ulp = 0.5 * 10.0 ** -(len(decimals) if decimals else 0)
    if exponent:
        value *= 10.0 ** int(exponent)
        half_ulp *= 10.0 ** int(exponent)
    if percent:
        value /= 100
        half_ulp /= 100
    return value, half_ulp


def resolve_pointer(doc, pointer: str):
    """RFC 6901 JSON pointer into a parsed JSON document."""
    if pointer == "":
        return doc
    if not pointer.startswith("/"):
        raise KeyError(f"a JSON pointer starts with '/': {pointer!r}")
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, list):
            if not re.fullmatch(r"0|[1-9]\d*", token):
                raise KeyError(f"{token!r} is not an array index in {pointer!r}")
            doc = doc[int(token)]
        elif isinstance(doc, dict):
            doc = doc[token]
        else:
            raise KeyError(f"{token!r} goes below a scalar in {pointer!r}")
    return doc


def test_parse_shown():
    assert parse_shown("0.923") == (0.923, pytest.approx(0.0005))
    assert parse_shown("+1,234")[0] == 1234
    assert parse_shown("\u22120.5")[0] == -0.5
    v, tol = parse_shown("93.45%")
    assert v == pytest.approx(0.9345) and tol == pytest.approx(0.00005)
    v, tol = parse_shown("9.2e-09")
    assert v == pytest.approx(9.2e-9) and tol == pytest.approx(0.5e-10)
    with pytest.raises(ValueError):
        parse_shown("n/a")


def test_resolve_pointer():
    doc = {"rows": [{"a/b": 1, "m~n": 2}, {"x": [5, 6]}], "": 7}
    assert resolve_pointer(doc, "/rows/0/a~1b") == 1
    assert resolve_pointer(doc, "/rows/0/m~0n") == 2
    assert resolve_pointer(doc, "/rows/1/x/1") == 6
    assert resolve_pointer(doc, "/") == 7
    with pytest.raises(KeyError):
        resolve_pointer(doc, "/rows/01")


def test_headline_numbers_match_their_json(page):
    root = page.execute_script("return document.body.getAttribute('data-root')")
    assert root, "<body> has no data-root"
    root = Path(root)
    assert root.is_absolute() and root.is_dir(), f"data-root {root} is not an absolute folder"
    spans = page.execute_script(
        "return [...document.querySelectorAll('.hl')].map(e => "
        "[e.textContent, e.getAttribute('data-source'), e.getAttribute('data-pointer')])")
    assert spans, "the report has no headline number (.hl)"
    docs: dict[str, object] = {}
    wrong = []
    for text, source, pointer in spans:
        where = f"{text!r} ({source}#{pointer})"
        if not source or pointer is None:
            wrong.append(f"{where}: no data-source or data-pointer")
            continue
        if source not in docs:
            try:
                docs[source] = json.loads((root / source).read_text())
            except (OSError, ValueError) as e:
                docs[source] = e
        if isinstance(docs[source], Exception):
            wrong.append(f"{where}: cannot read {source}: {docs[source]}")
            continue
        try:
            expected = resolve_pointer(docs[source], pointer)
        except (KeyError, IndexError) as e:
            wrong.append(f"{where}: the pointer does not resolve: {e}")
            continue
        if isinstance(expected, bool) or not isinstance(expected, (int, float)) or not math.isfinite(expected):
            wrong.append(f"{where}: the JSON value {expected!r} is not a finite number")
            continue
        try:
            shown, tol = parse_shown(text)
        except ValueError as e:
            wrong.append(f"{where}: {e}")
            continue
        if abs(shown - expected) > tol * (1 + 1e-9) + 1e-12 * max(1.0, abs(expected)):
            wrong.append(f"{where}: shows {shown!r}, the JSON holds {expected!r}")
    assert not wrong, f"{len(wrong)} of {len(spans)} headline numbers disagree with their JSON:\n" + "\n".join(wrong)


# --------------------------------------------------------------------------------------------------
# images, console, network


def test_images_load_from_data_uris(page):
    images = page.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.alt, i.getAttribute('src') || ''])")
    assert images, "the report has no image"
    broken = [f"alt={alt!r} src={src[:40]!r}" for complete, width, alt, src in images if not complete or width <= 0]
    assert not broken, f"{len(broken)} of {len(images)} images did not load:\n" + "\n".join(broken)
    linked = [f"alt={alt!r} src={src[:60]!r}" for _, _, alt, src in images if not src.startswith("data:image/")]
    assert not linked, "images not inlined as data:image/ URIs:\n" + "\n".join(linked)


def test_no_console_errors(page):
    errors = severe(page)
    assert not errors, "console errors on load:\n" + "\n".join(errors)


def test_nothing_is_fetched(page):
    outside = page.execute_script("""
        const bad = [];
        document.querySelectorAll('script[src]').forEach(e => bad.push('script src=' + e.getAttribute('src')));
        document.querySelectorAll('link[href]').forEach(e => {
            const href = e.getAttribute('href');
            if (!href.startsWith('data:')) bad.push('link rel=' + e.rel + ' href=' + href);
        });
        document.querySelectorAll('[src]').forEach(e => {
            const src = e.getAttribute('src');
            if (!src.startsWith('data:') && e.tagName !== 'SCRIPT') bad.push(e.tagName.toLowerCase() + ' src=' + src);
        });
        document.querySelectorAll('style').forEach(e => {
            if (/@import|url\\(\\s*['"]?(https?:|\\/\\/)/i.test(e.textContent))
                bad.push('style fetches: @import or url(http...)');
        });
        performance.getEntriesByType('resource').forEach(r => {
            if (!r.name.startsWith('data:') && !r.name.startsWith('blob:')) bad.push('fetched ' + r.name);
        });
        return bad;
    """)
    assert not outside, "the report is not self-contained:\n" + "\n".join(outside)


# --------------------------------------------------------------------------------------------------
# sections and provenance


def test_sections_with_provenance(page):
    sections = page.execute_script("""
        return [...document.querySelectorAll('section.analysis')].map(s => ({
            id: s.id,
            h2: s.querySelector('h2') ? s.querySelector('h2').textContent.trim() : null,
            provenance: [...s.querySelectorAll('details.provenance')].map(d => d.textContent),
        }));
    """)
    ids = [s["id"] for s in sections]
    missing = [i for i in SECTIONS[page.report_kind] if i not in ids]
    assert not missing, f"sections missing: {missing} (found {ids})"
    assert len(set(ids)) == len(ids), f"repeated section ids: {ids}"
    no_h2 = [s["id"] for s in sections if not s["h2"]]
    assert not no_h2, f"sections without an <h2>: {no_h2}"
    no_provenance = [s["id"] for s in sections if not any("sha256" in p for p in s["provenance"])]
    assert not no_provenance, f"sections without a <details class=provenance> naming a sha256: {no_provenance}"


# --------------------------------------------------------------------------------------------------
# sortable tables

_TABLES = """
    return [...document.querySelectorAll('table.sortable')].map((t, ti) => ({
        index: ti,
        headers: [...(t.tHead ? t.tHead.rows[t.tHead.rows.length - 1].cells : [])].map(c => c.textContent.trim()),
        rows: [...t.tBodies].flatMap(b => [...b.rows]).map(r => [...r.cells].map(c => c.getAttribute('data-value'))),
    }));
"""


def _numeric(values) -> list[float] | None:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def test_sortable_tables_sort_by_data_value(page):
    from selenium.webdriver.common.by import By

    tables = page.execute_script(_TABLES)
    assert tables, "the report has no <table class=sortable>"
    no_value = [f"table {t['index']} row {r}" for t in tables for r, row in enumerate(t["rows"]) if None in row]
    assert not no_value, "cells without data-value:\n" + "\n".join(no_value[:20])
    # A numeric column of a table with three rows or more, preferably one not already ascending.
    candidates = []
    for t in tables:
        if len(t["rows"]) < 3:
            continue
        for col in range(len(t["headers"])):
            values = _numeric(row[col] if col < len(row) else None for row in t["rows"])
            if values is not None and len(set(values)) > 1:
                candidates.append((values == sorted(values), t, col))
    assert candidates, "no sortable table with 3 rows or more and a numeric column"
    _, t, col = min(candidates, key=lambda c: c[0])
    before = sorted(map(tuple, t["rows"]))
    table = page.find_elements(By.CSS_SELECTOR, "table.sortable")[t["index"]]
    th = table.find_elements(By.CSS_SELECTOR, "thead tr:last-child th")[col]
    name = f"table {t['index']} column {col} ({t['headers'][col]!r})"
    page.get_log("browser")  # what loading logged is test_no_console_errors' business

    # a long table is folded in a <details>: open it, as a reader would, before clicking
    page.execute_script("for (let d = arguments[0].closest('details'); d; d = d.parentElement.closest('details'))"
                        " d.open = true;", th)
    for click, direction in ((1, "ascending"), (2, "descending")):
        page.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", th)
        th.click()
        rows = page.execute_script(_TABLES)[t["index"]]["rows"]
        values = _numeric(row[col] for row in rows)
        assert values is not None, f"{name}: data-value is no longer numeric after click {click}"
        want = sorted(values, reverse=direction == "descending")
        assert values == want, f"{name}: not {direction} after click {click}: {values}"
        assert sorted(map(tuple, rows)) == before, f"{name}: rows changed, not only their order, after click {click}"
        assert th.get_attribute("aria-sort") == direction, (
            f"{name}: aria-sort is {th.get_attribute('aria-sort')!r} after click {click}, not {direction!r}")
    errors = severe(page)
    assert not errors, "console errors while sorting:\n" + "\n".join(errors)


# --------------------------------------------------------------------------------------------------
# layout


@pytest.mark.parametrize("width", WIDTHS)
def test_no_horizontal_page_scroll(page, width, tmp_path):
    page.set_window_size(width, 900)
    layout = page.execute_script("""
        const wide = [...document.querySelectorAll('table')].filter(t => t.offsetWidth > window.innerWidth)
            .filter(t => {
                const wrap = t.closest('.table-wrap');
                return !wrap || !['auto', 'scroll'].includes(getComputedStyle(wrap).overflowX);
            }).length;
        return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, unwrapped: wide};
    """)
    shots = Path(os.environ.get("INFOPROBE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / f"report-{page.report_kind}-{width}.png"
    assert page.save_screenshot(str(shot))
    print(f"screenshot at {width} px: {shot}")
    assert layout["scroll"] <= layout["inner"] + 1, (
        f"at {width} px the page scrolls sideways: scrollWidth {layout['scroll']} > innerWidth {layout['inner']}"
        f" (screenshot {shot})")
    assert layout["unwrapped"] == 0, (
        f"at {width} px {layout['unwrapped']} tables wider than the window are not inside a"
        f" <div class=table-wrap> with overflow-x auto (screenshot {shot})")
