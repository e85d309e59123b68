"""Executed notebooks -> reveal.js decks that open offline: ``python scripts/slides.py SRC_DIR OUT_DIR``.

``make slides`` and ``tests/test_slides.py`` both run this script, so what the test renders is what
the command writes. A tool of the repository, not of the library: no notebook and nothing in
``lib/`` imports it. For every ``NN_name.ipynb`` in SRC_DIR it writes ``OUT_DIR/NN_name.slides.html``
and copies the JavaScript/CSS the decks load into ``OUT_DIR/vendor/``: the folder can be zipped and
opened anywhere, with no network.

How the deck stays offline. nbconvert's reveal template loads jQuery, require.js and MathJax from
cdnjs, reveal.js from unpkg, and mermaid as an ES module from cdnjs. Offline, require.js never
loads, so reveal never starts and the deck is blank. Every one of those URLs except mermaid's is a
configurable exporter trait (``jquery_url``, ``require_js_url``, ``mathjax_url``,
``reveal_url_prefix``): we point them at relative ``vendor/...`` paths, and a three-line template
that extends nbconvert's own ``reveal/index.html.j2`` removes the two blocks that can only load
from the network (the mermaid module import, which these notebooks never use, and the Jupyter
widgets loader). No forked template, no rewriting of the generated HTML. The theme is reveal's
``white``, whose fonts ship with reveal (nbconvert's default ``simple`` imports Google Fonts).
After writing a deck, ``remote_urls`` checks it: any ``<script src>``, ``<link href>`` or module
import that points at a remote host is an error, not a silent regression.

The vendor files come from the npm registry at pinned versions, installed once into the
git-ignored ``build/vendor/`` (a few seconds); later runs reuse them and need no network.

Cells are chosen by their ``slideshow.slide_type`` metadata (``skip`` cells are left out); code is
hidden (``--code`` keeps it) and so are the ``In [ ]``/``Out [ ]`` prompts. Figures are PNG outputs
and nbconvert embeds them as base64 ``data:`` URIs, so a deck is one HTML file plus ``vendor/``.

The talk, ``OUT_DIR/talk.slides.html``: one deck for the whole course, built the same way from the
cells tagged ``talk`` (cell metadata ``tags``; JupyterLab: property inspector, "Cell Tags"). A
generated title slide comes first, then the tagged cells of every notebook in notebook order; a
tagged markdown cell that starts with a heading begins a new slide, and so does each notebook's
first tagged cell; any other tagged cell (a figure, a sentence) joins the slide before it. Code is
always hidden, and a notebook without tagged cells contributes nothing. ``untitled_figure_slides``
lists the slides that show a figure without a heading to say what it shows.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VENDOR_CACHE = REPO_ROOT / "build" / "vendor"

# npm package -> pinned version. reveal.js 4.x keeps the layout nbconvert's template expects:
# dist/reveal.js, dist/reveal.css, dist/theme/<theme>.css, plugin/notes/notes.js.
PACKAGES = {"reveal.js": "4.6.1", "requirejs": "2.3.7", "jquery": "3.7.1", "mathjax": "2.7.9"}
THEME = "white"

# What each deck folder gets, as (package, path inside the package) -> path under OUT_DIR/vendor/.
# MathJax: only what the "TeX-AMS_CHTML-full,Safe" config loads (1.7 MB instead of the package's 73).
ASSETS = [
    ("reveal.js", "dist/reveal.js", "reveal.js/dist/reveal.js"),
    ("reveal.js", "dist/reveal.css", "reveal.js/dist/reveal.css"),
    ("reveal.js", f"dist/theme/{THEME}.css", f"reveal.js/dist/theme/{THEME}.css"),
    ("reveal.js", "dist/theme/fonts/source-sans-pro", "reveal.js/dist/theme/fonts/source-sans-pro"),
    ("reveal.js", "plugin/notes/notes.js", "reveal.js/plugin/notes/notes.js"),
    ("reveal.js", "LICENSE", "reveal.js/LICENSE"),
    ("requirejs", "require.js", "requirejs/require.js"),
    ("jquery", "dist/jquery.min.js", "jquery/jquery.min.js"),
    ("jquery", "LICENSE.txt", "jquery/LICENSE.txt"),
    *[
        ("mathjax", p, f"mathjax/{p}")
        for p in (
            "MathJax.js",
            "LICENSE",
            "config/TeX-AMS_CHTML-full.js",
            "config/Safe.js",
            "extensions",
            "jax/input/TeX",
            "jax/element/mml",
            "jax/output/CommonHTML",
            "fonts/HTML-CSS/TeX/woff",
        )
    ],
]
MATHJAX_IGNORE = shutil.ignore_patterns("a11y", "MathML", "HTML-CSS")  # extensions not loaded by CHTML

URLS = {
    "reveal_url_prefix": "vendor/reveal.js",
    "require_js_url": "vendor/requirejs/require.js",
    "jquery_url": "vendor/jquery/jquery.min.js",
    "mathjax_url": "vendor/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
}

OFFLINE_TEMPLATE = """{%- extends 'reveal/index.html.j2' -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""

TALK_TAG = "talk"
TALK_TITLE = "EfficientNetV2, notebook-first"
TALK_SUBTITLE = (
    "Tan & Le (2021), reproduced notebook by notebook: data, baselines, architecture, "
    "progressive learning, ablations, transfer, results"
)

NPM_HINT = (
    "npm not found: `make slides` fetches reveal.js, require.js, jQuery and MathJax from the "
    "npm registry once; install Node.js and npm (Debian: `apt-get install npm`)"
)


def vendor_ready(cache: Path = VENDOR_CACHE) -> bool:
    """True when every pinned package is already in the cache (no npm, no network needed)."""
    for name, version in PACKAGES.items():
        manifest = cache / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != version:
            return False
    return True


def fetch_vendor(cache: Path = VENDOR_CACHE) -> Path:
    """Install the pinned packages into ``cache`` with npm, once; return ``cache/node_modules``."""
    if not vendor_ready(cache):
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(NPM_HINT)
        cache.mkdir(parents=True, exist_ok=True)
        specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
        print(f"fetching {' '.join(specs)} into {cache}/ (once)", flush=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(cache),
                "--no-save",
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                *specs,
            ],
            check=True,
        )
        if not vendor_ready(cache):
            raise SystemExit(f"npm install into {cache} did not produce {', '.join(specs)}")
    return cache / "node_modules"


def copy_vendor(out_dir: Path, cache: Path = VENDOR_CACHE) -> Path:
    """Copy the files the decks load into ``out_dir/vendor`` (replacing an older copy)."""
    modules = fetch_vendor(cache)
    vendor = out_dir / "vendor"
    shutil.rmtree(vendor, ignore_errors=True)
    for package, src, dst in ASSETS:
        source, target = modules / package / src, vendor / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=MATHJAX_IGNORE if package == "mathjax" else None)
        else:
            shutil.copy2(source, target)
    return vendor


class _Refs(HTMLParser):
    """Collects the URLs a page loads: script src, link href, and ES-module imports."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            if attrs.get("src"):
                self.urls.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.urls += re.findall(r"""\bimport\b[^'"]*?\bfrom\s*['"]([^'"]+)['"]""", data)
            self.urls += re.findall(r"""\bimport\s*\(\s*['"]([^'"]+)['"]""", data)


def loaded_urls(html: str) -> list[str]:
    parser = _Refs()
    parser.feed(html)
    return parser.urls


def remote_urls(html: str) -> list[str]:
    """The URLs a page would fetch from another host (http(s):, protocol-relative //host)."""
    return [u for u in loaded_urls(html) if re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", u, re.I)]


def notebooks_in(src_dir: Path) -> list[Path]:
    return sorted(src_dir.glob("[0-9][0-9]_*.ipynb"))


def _exporter(code: bool):
    """nbconvert's reveal exporter, pointed at vendor/ and stripped of what only loads online."""
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter
    from traitlets.config import Config

    config = Config()
    exporter_config = config.SlidesExporter
    for trait, url in URLS.items():
        exporter_config[trait] = url
    exporter_config.reveal_theme = THEME
    exporter_config.reveal_scroll = True  # a slide taller than the screen scrolls
    exporter_config.exclude_input = not code  # nbconvert --no-input
    exporter_config.exclude_input_prompt = True  # and --no-prompt
    exporter_config.exclude_output_prompt = True
    return SlidesExporter(
        config=config,
        template_file="offline_reveal.html.j2",
        extra_loaders=[DictLoader({"offline_reveal.html.j2": OFFLINE_TEMPLATE})],
    )


def _write_deck(exporter, nb, name: str, title: str, out_dir: Path) -> Path:
    """Export ``nb`` to ``out_dir/<name>.slides.html``, refusing a deck that would load anything remote."""
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    remote = remote_urls(html)
    if remote:
        raise SystemExit(
            f"{name}: the deck would load {', '.join(sorted(set(remote)))} "
            f"from the network; scripts/slides.py must vendor it"
        )
    missing = [u for u in loaded_urls(html) if u.startswith("vendor/") and not (out_dir / u.split("?")[0]).is_file()]
    if missing:
        raise SystemExit(f"{name}: the deck loads {', '.join(missing)}, missing from {out_dir / 'vendor'}")
    deck = out_dir / f"{name}.slides.html"
    deck.write_text(html, encoding="utf-8")
    return deck


def _has_figure(cell) -> bool:
    return any(key.startswith("image/") for output in cell.get("outputs", []) for key in output.get("data", {}))


def _has_heading(cell) -> bool:
    return cell.cell_type == "markdown" and any(line.startswith("#") for line in cell.source.splitlines())


def talk_notebook(notebooks: list[Path]):
    """One notebook for the talk: a title slide, then the cells tagged ``talk``, in notebook order.

    Slides: a tagged markdown cell that starts with a heading, or a notebook's first tagged cell,
    begins one; other tagged cells join the slide before. Each cell records its origin in
    ``metadata.talk.from`` ("04_progressive_training.ipynb cell 12") for error messages."""
    import nbformat
    from nbformat.v4 import new_markdown_cell, new_notebook

    cells, metadata, parameters = [], {}, {}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        metadata = metadata or {k: nb.metadata[k] for k in ("kernelspec", "language_info") if k in nb.metadata}
        parameters = parameters or nb.metadata.get("papermill", {}).get("parameters", {})
        tagged = [(i, cell) for i, cell in enumerate(nb.cells) if TALK_TAG in cell.metadata.get("tags", [])]
        for n, (i, cell) in enumerate(tagged):
            cell = copy.deepcopy(cell)
            starts = n == 0 or (cell.cell_type == "markdown" and cell.source.lstrip().startswith("#"))
            cell.metadata["slideshow"] = {"slide_type": "slide" if starts else "-"}
            cell.metadata["talk"] = {"from": f"{path.name} cell {i}"}
            cell.id = f"talk-{len(cells) + 1}"  # unique across notebooks (nbformat 4.5 requires it)
            cells.append(cell)
    run = ", ".join(
        part
        for part in (parameters.get("dataset"), parameters.get("profile") and f"profile `{parameters['profile']}`")
        if part
    )
    title = new_markdown_cell(
        f"# {TALK_TITLE}\n\n{TALK_SUBTITLE}\n\n{run}".rstrip(), metadata={"slideshow": {"slide_type": "slide"}}
    )
    return new_notebook(cells=[title, *cells], metadata=metadata)


def untitled_figure_slides(nb) -> list[str]:
    """The slides of ``nb`` that show a figure but have no markdown heading saying what it shows.

    Works on the talk (``talk_notebook``) and on any notebook with ``slideshow`` metadata; each entry
    names the slide (0 is the first) and the cell the figure came from."""
    slides = []  # [figure origin or None, has a heading]
    for i, cell in enumerate(nb.cells):
        kind = cell.metadata.get("slideshow", {}).get("slide_type", "-")
        if kind in ("skip", "notes"):
            continue
        if kind in ("slide", "subslide") or not slides:
            slides.append([None, False])
        if _has_figure(cell) and slides[-1][0] is None:
            slides[-1][0] = cell.metadata.get("talk", {}).get("from", f"cell {i}")
        slides[-1][1] |= _has_heading(cell)
    return [f"slide {n}: the figure of {origin}" for n, (origin, titled) in enumerate(slides) if origin and not titled]


def export(src_dir: Path, out_dir: Path, code: bool = False, cache: Path = VENDOR_CACHE) -> list[Path]:
    """Write one offline deck per executed notebook in ``src_dir``, then the talk; return their paths."""
    import nbformat

    notebooks = notebooks_in(src_dir)
    if not notebooks:
        raise SystemExit(f"no executed notebooks (NN_name.ipynb) in {src_dir}/: run `make reproduce` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    copy_vendor(out_dir, cache)
    exporter = _exporter(code)

    decks = []
    for notebook in notebooks:
        nb = nbformat.read(notebook, as_version=4)
        if not any(_has_figure(cell) for cell in nb.cells):
            print(
                f"warning: {notebook} has no figure outputs, so its deck has no figures. A figure is in "
                f"the notebook only if the kernel displayed it: run papermill without MPLBACKEND=Agg "
                f"(the kernel's default inline backend embeds PNGs)",
                file=sys.stderr,
            )
        decks.append(_write_deck(exporter, nb, notebook.stem, notebook.stem, out_dir))
        print(f"{notebook} -> {decks[-1]}")

    talk = talk_notebook(notebooks)
    if len(talk.cells) == 1:
        print(
            f"warning: no cell in {src_dir}/ is tagged {TALK_TAG!r}, so the talk is its title slide only",
            file=sys.stderr,
        )
    talk_exporter = _exporter(code=False) if code else exporter  # the talk never shows code
    decks.append(_write_deck(talk_exporter, talk, "talk", TALK_TITLE, out_dir))
    print(f"the cells tagged {TALK_TAG!r} -> {decks[-1]}")
    return decks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python scripts/slides.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src_dir", type=Path, help="folder of executed notebooks (NN_name.ipynb)")
    parser.add_argument("out_dir", type=Path, help="where the decks and vendor/ go")
    parser.add_argument("--code", action="store_true", help="keep the code cells' input (hidden by default)")
    parser.add_argument(
        "--vendor-cache",
        type=Path,
        default=VENDOR_CACHE,
        help=f"where npm installs the pinned packages once (default {VENDOR_CACHE})",
    )
    args = parser.parse_args(argv)
    decks = export(args.src_dir, args.out_dir, code=args.code, cache=args.vendor_cache)
    print(
        f"{len(decks) - 1} deck(s) and the talk in {args.out_dir}/ (open offline; the folder, with vendor/, "
        f"is self-contained)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
