"""``ssbench table --format html``: the static site, read as written and in a real browser (Debian's chromium,
headless, ``--dump-dom`` after the page's script ran, ``--screenshot``): no console message, the leaderboards'
numbers are the main table CSV's, sorting a column reorders the rows, every link and image resolves to a file."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from report_runs import build_tables, write_run

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


class Page(HTMLParser):
    """Tables (id -> rows of (row attributes, cell texts, cell attributes)), links, images, the body's attributes."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list] = {}
        self.links: list[str] = []
        self.body: dict = {}
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", f"t{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = (a, [], [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [tag, a, ""]
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag in ("img", "script", "link") and ("src" in a or "href" in a):
            self.links.append(a.get("src") or a.get("href"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            if self._cell[0] == "td":
                self._row[1].append(self._cell[2].strip())
                self._row[2].append(self._cell[1])
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row[1]:
                self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_run):
    """A results folder of hand-written ACDC runs (3 methods x 2 seeds x 2 splits) and one run the engine wrote
    (TensorBoard events, overlays), its tables, figures and site."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("site") / "results"
    for method, shift in (("supervised", 0.0), ("mean-teacher", 0.03), ("unimatch", 0.06)):
        for split in ("3", "7"):
            for seed in (1, 2):
                write_run(root, method, split, seed, rng=rng, shift=shift)
    shutil.copytree(tiny_run, root / "nnunet" / "supervised" / "2" / "seed1337")
    out = root.parent / "paper"
    build_tables(root, out, formats=("md", "csv", "html"), draw=True)
    return root, out


def _number(text: str) -> float:
    return float(text.split(" ± ")[0].rstrip("†‡"))


def _check_boards(page: Page, out: Path) -> int:
    """Every leaderboard cell equals the main table CSV's mean (to the printed 2 decimals), with its mark and
    rank; returns the number of cells checked."""
    checked = 0
    for stem in ("acdc", "nnunet"):
        frame = pd.read_csv(out / f"main_{stem}.csv")
        metrics = ["dice", "jaccard", "hd95", "asd"]
        for labeled in sorted(frame[frame.section != "upper"]["labeled"].unique()):
            rows = page.tables[f"board-{stem}-{labeled}"]
            expected = frame[(frame.labeled == labeled) | (frame.section == "upper")]
            assert [r[1][0] for r in rows] == list(dict.fromkeys(expected["row"]))
            for attrs, cells, cell_attrs in rows:
                label = cells[0]
                for k, metric in enumerate(metrics):
                    hit = expected[(expected.row == label) & (expected.metric == metric)].iloc[0]
                    text = cells[3 + k]
                    assert _number(text) == round(hit["mean"], 2), (label, metric, text)
                    mark = hit["mark"] if isinstance(hit["mark"], str) else ""
                    assert text.endswith(mark) and (mark or not text.endswith(("†", "‡")))
                    css = cell_attrs[3 + k].get("class")
                    assert css == {1: "best", 2: "second"}.get(hit["rank"], "num"), (label, metric, css)
                    checked += 1
    return checked


def _dead_links(page: Page, where: Path) -> list[str]:
    dead = []
    for link in page.links:
        url = urlparse(link)
        assert url.scheme in ("", "file"), f"{where}: fetches {link}"  # nothing from the internet
        if not url.path:
            continue
        target = (where.parent / unquote(url.path)).resolve()
        if not target.is_file():
            dead.append(link)
    return dead


@pytest.mark.slow  # the site fixture builds tables and figures of 13 runs: about 30 s, shared with the browser test
def test_the_site_as_written_is_static_and_its_numbers_are_the_csvs(site):
    root, out = site
    index = out / "site" / "index.html"
    page = Page(index.read_text())
    assert _check_boards(page, out) == (3 * 2 + 1) * 4  # rows x splits + the engine run, 4 metrics
    pages = [index, *sorted((out / "site" / "runs").glob("*.html"))]
    assert len(pages) == 1 + 12 + 1  # the index and one page per run
    for p in pages:
        assert not _dead_links(Page(p.read_text()), p), p
    engine_run = out / "site" / "runs" / "nnunet__supervised__2__seed1337.html"
    text = engine_run.read_text()
    assert "<svg" in text and "overlay_case_" in text and "config_hash" in text  # curves, overlays, config
    per_case = Page(text).tables["per-case"]
    frame = pd.read_csv(root / "nnunet" / "supervised" / "2" / "seed1337" / "metrics_per_case.csv")
    assert len(per_case) == frame[frame.checkpoint == "best"]["case_id"].nunique()


def _chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("SSBENCH_REQUIRE_BROWSER"):
            pytest.fail("SSBENCH_REQUIRE_BROWSER is set but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (CI installs it: .ci/run)")
    return exe


def _browse(exe, tmp_path, url: str, *args) -> tuple[str, str]:
    """(DOM after the page's script ran, chromium's log) of one headless visit with a fresh profile."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           *args, url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def _console(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow
def test_the_site_in_a_real_browser(site, tmp_path):
    exe = _chromium()
    root, out = site
    index = (out / "site" / "index.html").resolve()
    dom, log = _browse(exe, tmp_path, index.as_uri(), "--dump-dom")
    page = Page(dom)
    assert page.body.get("data-ready") == "1", "the page's script did not run to its end"
    assert not _console(log), _console(log)  # no error, no message at all
    assert _check_boards(page, out) == (3 * 2 + 1) * 4  # rows x splits + the engine run, 4 metrics
    assert not _dead_links(page, index)

    # Sorting: by 95HD (column 5) ascending, then descending, through the address (#sort=...).
    frame = pd.read_csv(out / "main_acdc.csv")
    hd = frame[(frame.labeled == 3) | (frame.section == "upper")].query("metric == 'hd95'")
    order = hd.sort_values("mean", kind="stable")["row"].tolist()
    for direction, expected in (("asc", order), ("desc", order[::-1])):
        dom, log = _browse(exe, tmp_path, f"{index.as_uri()}#sort=board-acdc-3:5:{direction}", "--dump-dom")
        rows = Page(dom).tables["board-acdc-3"]
        assert [r[1][0] for r in rows] == expected, direction
        assert not _console(log), _console(log)
    assert order != list(dict.fromkeys(hd["row"])) or order[::-1] != list(dict.fromkeys(hd["row"]))

    # Filtering by method hides the other rows.
    dom, _ = _browse(exe, tmp_path, f"{index.as_uri()}#filter=unimatch", "--dump-dom")
    shown = [r[1][0] for r in Page(dom).tables["board-acdc-3"] if "hidden" not in r[0]]
    assert shown and all("UniMatch" in s for s in shown)

    # A run page of each kind (hand-written, engine-written: curves from events, overlays): its script runs without
    # a console message, its links and images resolve (every page's links: the test above).
    for run_page in (out / "site" / "runs" / "acdc__unimatch__3__seed1.html",
                     out / "site" / "runs" / "nnunet__supervised__2__seed1337.html"):
        dom, log = _browse(exe, tmp_path, run_page.resolve().as_uri(), "--dump-dom")
        assert Page(dom).body.get("data-ready") == "1" and not _console(log), (run_page, _console(log))
        assert not _dead_links(Page(dom), run_page.resolve()), run_page

    # A screenshot of the index, kept as a test artifact (SSBENCH_ARTIFACTS, else the test's folder).
    artifacts = Path(os.environ.get("SSBENCH_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "site-index.png"
    _browse(exe, tmp_path, index.as_uri(), f"--screenshot={shot}", "--window-size=1280,1800",
            "--hide-scrollbars")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
