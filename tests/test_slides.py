"""`make slides`: executed notebooks become reveal.js decks that render offline, figures included,
and the cells tagged ``talk`` become one more deck, the talk.

Everything goes through ``python scripts/slides.py SRC_DIR OUT_DIR``, the command `make slides` runs.
Synthetic notebooks check which cells each deck takes. The rendering test uses notebook 01 executed
once per session (smoke profile, ~25 s, ``executed_01`` in conftest.py), exports it with three cells
tagged for the talk, and looks at both decks in headless Chromium with every host name unresolvable:
each must start (reveal adds ``ready``), show its figure slide, and the screenshots must not be blank.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headless import chrome, pixels

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slides.py"
# The deck builder is a script, not a module of the library: its functions are loaded from its file.
_spec = importlib.util.spec_from_file_location("slides", SCRIPT)
slides = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slides)
REMOTE_TAG = re.compile(
    r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']?((?:[a-z][a-z0-9+.-]*:)?//[^"'\s>]+)""", re.I
)


@pytest.fixture(scope="module")
def vendor_cache():
    """The pinned reveal.js/require.js/jQuery/MathJax, fetched once from npm like `make slides` does."""
    if not slides.vendor_ready() and shutil.which("npm") is None:
        pytest.skip(slides.NPM_HINT)
    try:
        slides.fetch_vendor()
    except subprocess.CalledProcessError as err:
        pytest.skip(f"could not fetch the slide assets from the npm registry ({err})")
    return slides.VENDOR_CACHE


def _export(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(src), str(out), *extra], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"python scripts/slides.py failed:\n{run.stderr[-3000:]}"
    return run


def _png(color) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _sections(html: str):
    """(h, v, html-inside) for every slide; v is None for a horizontal slide without subslides."""

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.depth, self.h, self.v, self.found = 0, -1, -1, []

        def handle_starttag(self, tag, attrs):
            if tag == "section":
                self.depth += 1
                if self.depth == 1:
                    self.h, self.v = self.h + 1, -1
                    self.found.append([self.h, None, False])
                else:
                    self.v += 1
                    self.found.append([self.h, self.v, False])
            elif tag == "img" and (dict(attrs).get("src") or "").startswith("data:image/png;base64,"):
                self.found[-1][2] = True

        def handle_endtag(self, tag):
            if tag == "section":
                self.depth -= 1

    parser = Parser()
    parser.feed(html)
    return parser.found


# --- fast checks: no data, no Chromium, only the vendored assets -----------------------------------


def test_remote_urls_finds_every_kind_of_remote_load():
    html = """<link rel="stylesheet" href="vendor/reveal.js/dist/reveal.css">
    <script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js"></script>
    <link href="//fonts.googleapis.com/css?family=Lato" rel="stylesheet">
    <script type="module">import mermaid from 'https://cdn.example/mermaid.mjs';</script>
    <script src="vendor/requirejs/require.js"></script><a href="https://example.org">a link is fine</a>"""
    assert slides.remote_urls(html) == [
        "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js",
        "//fonts.googleapis.com/css?family=Lato",
        "https://cdn.example/mermaid.mjs",
    ]


def test_empty_folder_says_to_run_reproduce(tmp_path):
    with pytest.raises(SystemExit, match="make reproduce"):
        slides.export(tmp_path, tmp_path / "slides")


def test_export_hides_code_and_skipped_cells_and_embeds_figures(tmp_path, vendor_cache):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    def cell(make, source, slide_type, **kw):
        made = make(source, **kw)
        made.metadata["slideshow"] = {"slide_type": slide_type}
        return made

    nb = new_notebook(
        cells=[
            cell(new_markdown_cell, "# Title slide", "slide"),
            cell(
                new_code_cell,
                "hidden_setup_code = 1",
                "skip",
                outputs=[new_output("stream", name="stdout", text="SKIPPED-OUTPUT\n")],
            ),
            cell(new_markdown_cell, "## A figure", "subslide"),
            cell(
                new_code_cell,
                "visible_figure_code()",
                "-",
                execution_count=1,
                outputs=[new_output("display_data", data={"image/png": _png((200, 40, 40)), "text/plain": "<Figure>"})],
            ),
        ]
    )
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(nb, src / "07_demo.ipynb")

    _export(src, tmp_path / "slides")
    html = (tmp_path / "slides" / "07_demo.slides.html").read_text()
    assert "Title slide" in html and "A figure" in html
    assert "visible_figure_code" not in html, "code must be hidden by default"
    assert "hidden_setup_code" not in html and "SKIPPED-OUTPUT" not in html, "skip cells must be left out"
    assert html.count('src="data:image/png;base64,') == 1
    assert [(h, v, img) for h, v, img in _sections(html)] == [(0, None, False), (0, 0, False), (0, 1, True)]
    assert slides.remote_urls(html) == [] and REMOTE_TAG.findall(html) == []
    assert "unpkg.com" not in html and "cdnjs" not in html
    for url in slides.loaded_urls(html):
        assert (tmp_path / "slides" / url.split("?")[0]).is_file(), f"{url} is not in the deck's folder"

    _export(src, tmp_path / "with_code", "--code")
    assert "visible_figure_code" in (tmp_path / "with_code" / "07_demo.slides.html").read_text()


# --- the talk: the cells tagged "talk" of every notebook, in notebook order, as one deck -----------

RED, GREEN, BLUE = _png((200, 40, 40)), _png((40, 200, 40)), _png((40, 40, 200))


def _course(src: Path) -> None:
    """Three executed-looking notebooks: tagged and untagged cells, one notebook with no tag at all."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    def figure(png, source, tags=()):
        return new_code_cell(
            source,
            execution_count=1,
            metadata={"tags": list(tags)},
            outputs=[new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})],
        )

    def text(source, tags=()):
        return new_markdown_cell(source, metadata={"tags": list(tags)})

    src.mkdir()
    nbformat.write(
        new_notebook(
            cells=[
                text("# Data\n\nClass balance, in one figure.", ["talk"]),
                figure(RED, "red_figure_code()", ["talk", "other"]),
                text("UNTAGGED-MARKDOWN"),
                figure(GREEN, "untagged_figure_code()"),
            ]
        ),
        src / "01_data.ipynb",
    )
    nbformat.write(
        new_notebook(cells=[text("# NOT-IN-THE-TALK"), figure(GREEN, "more_untagged()")]), src / "02_untagged.ipynb"
    )
    nbformat.write(
        new_notebook(
            cells=[
                text("## Results against the seeds", ["talk"]),
                figure(BLUE, "blue_figure_code()", ["talk"]),
                text("Within a few points of the coursework's 93.93%.", ["talk"]),
            ]
        ),
        src / "03_results.ipynb",
    )


def test_talk_is_the_tagged_cells_in_notebook_order_after_a_title(tmp_path, vendor_cache):
    _course(tmp_path / "src")
    run = _export(tmp_path / "src", tmp_path / "slides")
    assert "no cell" not in run.stderr
    html = (tmp_path / "slides" / "talk.slides.html").read_text()

    # nbconvert wraps every slide in an outer <section>: title, "Data" with red, "Results" with blue
    assert [(h, v, img) for h, v, img in _sections(html)] == [
        (0, None, False),
        (0, 0, False),
        (1, None, False),
        (1, 0, True),
        (2, None, False),
        (2, 0, True),
    ]
    titles = re.findall(r"<h[12][^>]*>(.*?)<", html)
    assert titles[:3] == [slides.TALK_TITLE, "Data", "Results against the seeds"], titles
    assert (
        html.index("Class balance")
        < html.index(RED)
        < html.index("Results against")
        < html.index(BLUE)
        < html.index("93.93%")
    )
    assert GREEN not in html and "UNTAGGED-MARKDOWN" not in html and "NOT-IN-THE-TALK" not in html
    assert "_figure_code" not in html, "code must be hidden in the talk"
    assert html.count('src="data:image/png;base64,') == 2
    assert slides.remote_urls(html) == [] and REMOTE_TAG.findall(html) == []
    for url in slides.loaded_urls(html):
        assert (tmp_path / "slides" / url.split("?")[0]).is_file(), f"{url} is not in the deck's folder"

    _export(tmp_path / "src", tmp_path / "with_code", "--code")
    assert "red_figure_code" in (tmp_path / "with_code" / "01_data.slides.html").read_text()
    assert "red_figure_code" not in (tmp_path / "with_code" / "talk.slides.html").read_text()


def test_talk_without_tagged_cells_is_its_title_slide_and_says_so(tmp_path, vendor_cache):
    import nbformat
    from nbformat.v4 import new_markdown_cell, new_notebook

    (tmp_path / "src").mkdir()
    nbformat.write(new_notebook(cells=[new_markdown_cell("# Untagged")]), tmp_path / "src" / "01_a.ipynb")
    run = _export(tmp_path / "src", tmp_path / "slides")
    assert "no cell in" in run.stderr and "'talk'" in run.stderr
    html = (tmp_path / "slides" / "talk.slides.html").read_text()
    assert [(h, v) for h, v, _ in _sections(html)] == [(0, None), (0, 0)]
    assert slides.TALK_TITLE in html and "Untagged" not in html


def test_untitled_figure_slides_names_the_figure_without_a_heading(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_output

    _course(tmp_path / "src")
    talk = slides.talk_notebook(slides.notebooks_in(tmp_path / "src"))
    assert [c.metadata["talk"]["from"] for c in talk.cells[1:]] == [
        "01_data.ipynb cell 0",
        "01_data.ipynb cell 1",
        "03_results.ipynb cell 0",
        "03_results.ipynb cell 1",
        "03_results.ipynb cell 2",
    ]
    assert slides.untitled_figure_slides(talk) == []

    nb = nbformat.read(tmp_path / "src" / "03_results.ipynb", as_version=4)
    nb.cells[0] = new_markdown_cell("Results, said without a heading", metadata={"tags": ["talk"]})
    nb.cells.append(
        new_code_cell("", metadata={"tags": ["talk"]}, outputs=[new_output("display_data", data={"image/png": RED})])
    )
    nbformat.write(nb, tmp_path / "src" / "03_results.ipynb")
    talk = slides.talk_notebook(slides.notebooks_in(tmp_path / "src"))
    assert slides.untitled_figure_slides(talk) == ["slide 2: the figure of 03_results.ipynb cell 1"]


# --- the real thing: notebook 01 executed, exported, rendered in headless Chromium ------------------


@pytest.fixture(scope="module")
def deck(tmp_path_factory, chromium_path, executed_01, vendor_cache):
    """Notebook 01's deck, and the talk of its cells tagged ``talk`` in the repository."""
    import shutil

    tmp = tmp_path_factory.mktemp("slides")
    (tmp / "src").mkdir()
    shutil.copy(executed_01, tmp / "src" / executed_01.name)
    _export(tmp / "src", tmp / "slides")
    return tmp / "slides" / f"{executed_01.stem}.slides.html", tmp / "src" / executed_01.name


def _chrome(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return chrome(url, tmp / "chromium-profile", *args, size=(1280, 800), budget_ms=5000)


def test_deck_is_offline_and_embeds_the_figures(deck):
    html_path, executed = deck
    html = html_path.read_text()
    assert REMOTE_TAG.findall(html) == [], "a <script src>/<link href> points at a remote host"
    assert slides.remote_urls(html) == []
    for url in slides.loaded_urls(html):
        assert (html_path.parent / url.split("?")[0]).is_file(), f"{url} is not in the deck's folder"
    figures = sum(
        "image/png" in output.get("data", {})
        for cell in json.loads(executed.read_text())["cells"]
        for output in cell.get("outputs", [])
    )
    assert figures >= 3, "notebook 01 should display its figures (is MPLBACKEND=Agg set for the kernel?)"
    assert html.count('src="data:image/png;base64,') == figures
    assert "manual_seed" not in html, "code must be hidden"


@pytest.mark.parametrize("name", ["01_data_exploration", "talk"])
def test_deck_renders_title_and_figure_slides_in_headless_chromium(deck, tmp_path, name):
    html_path = deck[0].with_name(f"{name}.slides.html")
    html = html_path.read_text()
    h, v, _ = next(s for s in _sections(html) if s[2])
    figure_hash = f"#/{h}" if v is None else f"#/{h}/{v}"
    url = html_path.resolve().as_uri()

    shots = {"title": tmp_path / "title.png", "figure": tmp_path / "figure.png"}
    _chrome(url + "#/0", tmp_path, f"--screenshot={shots['title']}")
    dom = _chrome(url + figure_hash, tmp_path, "--dump-dom", f"--screenshot={shots['figure']}").stdout
    assert re.search(r'class="reveal[^"]*\bready\b', dom), "reveal.js never started (a script did not load?)"
    present = re.findall(r'<section[^>]*class="[^"]*\bpresent\b[^"]*"[^>]*>(.*?)</section>', dom, re.S)
    assert any("data:image/png;base64," in body for body in present), f"slide {figure_hash} shows no figure"

    title, title_ink = pixels(shots["title"])
    assert title.std() > 10 and len(np.unique(title.reshape(-1, 3), axis=0)) > 16, "title slide is blank"
    assert title_ink > 0.01, f"title slide has almost no text ({title_ink:.3f} of the pixels)"
    figure, figure_ink = pixels(shots["figure"])
    assert figure.std() > 10, "figure slide is blank"
    # Text-only slides of this deck cover 2-5 % of the screen; a figure covers far more.
    assert figure_ink > 0.10, f"figure slide {figure_hash}: only {figure_ink:.3f} of the pixels are not background"
    assert not np.array_equal(title, figure)


def test_talk_of_notebook_01_is_offline_and_titles_its_figure(deck):
    html = deck[0].with_name("talk.slides.html").read_text()
    assert slides.remote_urls(html) == [] and REMOTE_TAG.findall(html) == []
    cells = json.loads(deck[1].read_text())["cells"]
    tagged_figures = sum(slides._has_figure(c) for c in cells if slides.TALK_TAG in c["metadata"].get("tags", []))
    assert tagged_figures == 2, "notebook 01 tags two figures for the talk (the samples, the linear model's confusion)"
    assert html.count('src="data:image/png;base64,') == tagged_figures, "the talk holds exactly the tagged figures"
    assert "manual_seed" not in html, "code must be hidden"
    assert slides.untitled_figure_slides(slides.talk_notebook([deck[1]])) == []


def test_the_course_talk_is_about_twenty_slides_in_the_seeds_order_each_figure_titled():
    """The repository's own tags, without executing anything: a tagged code cell that draws
    (``plt.show()``) stands in for its figure."""
    from nbformat.v4 import new_output

    talk = slides.talk_notebook(slides.notebooks_in(REPO / "notebooks"))
    for cell in talk.cells:
        if cell.cell_type == "code" and "plt.show()" in cell.source:
            cell.outputs = [new_output("display_data", data={"image/png": RED})]
    assert slides.untitled_figure_slides(talk) == []
    starts = [c for c in talk.cells if c.metadata["slideshow"]["slide_type"] == "slide"]
    assert 18 <= len(starts) <= 25, f"{len(starts)} slides"
    order = [c.metadata["talk"]["from"][:2] for c in starts[1:]]
    assert order == sorted(order) and set(order) == {"01", "02", "03", "04", "05", "06", "07"}
    figures = sum(c.cell_type == "code" and bool(c.outputs) for c in talk.cells)
    assert figures >= 12, f"only {figures} figures in the talk"
