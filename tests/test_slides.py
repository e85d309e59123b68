"""`make slides`: executed notebooks become reveal.js decks that render offline, figures included.

Everything goes through ``python -m lib.slides SRC_DIR OUT_DIR``, the command `make slides` runs.
The rendering test executes notebook 01 (smoke profile, ~20 s), exports it, and looks at it in
headless Chromium with every host name unresolvable: the deck must start (reveal adds ``ready``),
show the figure slide, and the screenshots must not be blank.
"""
from __future__ import annotations

import base64
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
from lib import slides

REPO = Path(slides.__file__).resolve().parents[1]
REMOTE_TAG = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']?((?:[a-z][a-z0-9+.-]*:)?//[^"'\s>]+)""",
                        re.I)


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
    run = subprocess.run([sys.executable, "-m", "lib.slides", str(src), str(out), *extra], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"python -m lib.slides failed:\n{run.stderr[-3000:]}"
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
    assert slides.remote_urls(html) == ["https://cdnjs.cloudflare.com/ajax/libs/require.js/2.1.10/require.min.js",
                                        "//fonts.googleapis.com/css?family=Lato", "https://cdn.example/mermaid.mjs"]


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

    nb = new_notebook(cells=[
        cell(new_markdown_cell, "# Title slide", "slide"),
        cell(new_code_cell, "hidden_setup_code = 1", "skip",
             outputs=[new_output("stream", name="stdout", text="SKIPPED-OUTPUT\n")]),
        cell(new_markdown_cell, "## A figure", "subslide"),
        cell(new_code_cell, "visible_figure_code()", "-", execution_count=1,
             outputs=[new_output("display_data", data={"image/png": _png((200, 40, 40)), "text/plain": "<Figure>"})]),
    ])
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


# --- the real thing: notebook 01 executed, exported, rendered in headless Chromium ------------------

@pytest.fixture(scope="module")
def deck(tmp_path_factory, chromium_path, executed_01, vendor_cache):
    tmp = tmp_path_factory.mktemp("slides")
    (tmp / "src").mkdir()
    shutil.copy2(executed_01, tmp / "src" / executed_01.name)
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
    figures = sum("image/png" in output.get("data", {})
                  for cell in json.loads(executed.read_text())["cells"] for output in cell.get("outputs", []))
    assert figures >= 3, "notebook 01 should display its figures (is MPLBACKEND=Agg set for the kernel?)"
    assert html.count('src="data:image/png;base64,') == figures
    assert "manual_seed" not in html, "code must be hidden"


def test_deck_renders_title_and_figure_slides_in_headless_chromium(deck, tmp_path):
    html_path, _ = deck
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
