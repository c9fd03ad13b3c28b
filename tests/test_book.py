"""The course book's scripts (book/): staging, caching, link checking, and the browser check itself.

The Sphinx and browser tests build a two-notebook site in a temporary folder (no notebook is
executed); they are skipped where the book's extra (sphinx, myst-nb, playwright) or Chromium is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

BOOK = Path(__file__).resolve().parents[1] / "book"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PYTHON = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
}


def _load(name: str):
    if str(BOOK) not in sys.path:
        sys.path.insert(0, str(BOOK))  # the scripts import their sibling browser.py
    spec = importlib.util.spec_from_file_location(f"rece_lite_book_{name}", BOOK / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = _load("build")


def _repo(tmp_path: Path) -> Path:
    """A repository with two notebooks that link each other, a glossary and a docs page."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "rece_lite").mkdir()
    (tmp_path / "rece_lite" / "core.py").write_text("x = 1\n")
    first = new_notebook(
        cells=[
            new_markdown_cell(
                "# 01 · First\n\nOn to [the second](02_second.ipynb#a-section) and the [glossary](glossary.md)."
            ),
            new_code_cell("print(1 + 1)"),
        ],
        metadata=PYTHON,
    )
    solution = new_code_cell("answer = 42", metadata={"tags": ["hide-input"], "jupyter": {"source_hidden": True}})
    helper = new_code_cell("helper = 1", metadata={"tags": ["hide-input"]})
    second = new_notebook(
        cells=[
            new_markdown_cell("# 02 · Second\n\n## A section\n\nBack to [the first](01_first.ipynb)."),
            solution,
            helper,
        ],
        metadata=PYTHON,
    )
    nbformat.write(first, tmp_path / "notebooks" / "01_first.ipynb")
    nbformat.write(second, tmp_path / "notebooks" / "02_second.ipynb")
    (tmp_path / "notebooks" / "glossary.md").write_text("# Glossary\n\n$\\lambda$ the pull to the old weights.\n")
    (tmp_path / "docs" / "aside.md").write_text("# An aside\n\nSee [notebook 1](../notebooks/01_first.ipynb).\n")
    return tmp_path


# --- staging ----------------------------------------------------------------------------------


def test_notebooks_come_in_order_and_the_glossary_leads_the_pages(tmp_path):
    course = build.find_course(_repo(tmp_path))
    assert [p.name for p in course.notebooks] == ["01_first.ipynb", "02_second.ipynb"]
    assert [p.name for p in course.pages] == ["glossary.md", "aside.md"]


def test_the_index_lists_every_page_by_its_path(tmp_path):
    root = _repo(tmp_path)
    text = build.index_markdown("# Intro\n", build.find_course(root), root)
    for entry in ("notebooks/01_first", "notebooks/02_second", "notebooks/glossary", "docs/aside"):
        assert f"\n{entry}\n" in text


def test_the_cache_key_follows_the_code_not_the_outputs():
    nb = new_notebook(cells=[new_code_cell("print(1)")])
    key = build.notebook_key(nb, "lib")
    nb.cells[0].outputs = [new_output("stream", name="stdout", text="1\n")]
    assert build.notebook_key(nb, "lib") == key
    nb.cells[0].source = "print(2)"
    assert build.notebook_key(nb, "lib") != key


def test_the_cache_key_follows_the_library():
    nb = new_notebook(cells=[new_code_cell("print(1)")])
    assert build.notebook_key(nb, "lib-a") != build.notebook_key(nb, "lib-b")


def test_the_library_fingerprint_changes_with_a_library_file(tmp_path):
    root = _repo(tmp_path)
    before = build.library_fingerprint(root)
    (root / "rece_lite" / "core.py").write_text("x = 2\n")
    assert build.library_fingerprint(root) != before


def test_a_widget_keeps_its_picture_and_drops_its_view():
    bundle = {WIDGET_VIEW: {"model_id": "m"}, "image/png": "iVBOR", "text/plain": "VBox()"}
    nb = new_notebook(
        cells=[new_code_cell("viz.attention_explorer(runs)", outputs=[new_output("display_data", bundle)])]
    )
    data = build.for_the_page(nb).cells[0].outputs[0].data
    assert sorted(data) == ["image/png", "text/plain"]


def test_a_widget_without_a_picture_is_left_out():
    bar = new_output("display_data", {WIDGET_VIEW: {"model_id": "m"}, "text/plain": "  0%|"})
    nb = new_notebook(cells=[new_code_cell("pipe(...)", outputs=[bar])])
    assert build.for_the_page(nb).cells[0].outputs == []


def _printed_markdown(text: str) -> str:
    said = new_output("display_data", {"text/markdown": text, "text/plain": "<Markdown>"})
    nb = new_notebook(cells=[new_code_cell("course.say(...)", outputs=[said])])
    return build.for_the_page(nb).cells[0].outputs[0].data["text/markdown"]


def test_printed_links_to_notebooks_point_at_their_pages():
    assert _printed_markdown("[04](04_deriving_embeddings.ipynb)") == "[04](04_deriving_embeddings.html)"


def test_printed_links_to_markdown_pages_keep_their_anchor():
    assert _printed_markdown("[g](glossary.md#guide)") == "[g](glossary.html#guide)"


def test_printed_links_elsewhere_are_left_alone():
    text = "[a](https://example.org/x.md) [b](#here)"
    assert _printed_markdown(text) == text


def test_a_solution_folds_behind_show_solution():
    cell = new_code_cell("x = 1", metadata={"tags": ["hide-input"], "jupyter": {"source_hidden": True}})
    page = build.for_the_page(new_notebook(cells=[cell]))
    assert page.cells[0].metadata["mystnb"]["code_prompt_show"] == "Show solution"


def test_a_hidden_helper_is_not_called_a_solution():
    cell = new_code_cell("x = 1", metadata={"tags": ["hide-input"]})
    page = build.for_the_page(new_notebook(cells=[cell]))
    assert "mystnb" not in page.cells[0].metadata


# --- the link check (no browser) ----------------------------------------------------------------

check_site = _load("check_site")


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "notebooks").mkdir(parents=True)
    (site / "index.html").write_text("<a href='notebooks/a.html#here'>a</a>")
    (site / "notebooks" / "a.html").write_text("<h1 id='here'>A</h1>")
    return site


def _pages(**links):
    base = "http://127.0.0.1:1/"
    pages = {
        "index.html": check_site.Page("index.html", links=[base + link for link in links.values()]),
        "notebooks/a.html": check_site.Page("notebooks/a.html", ids={"here"}),
    }
    return pages, base


def test_a_link_to_an_existing_anchor_is_fine(tmp_path):
    pages, base = _pages(ok="notebooks/a.html#here")
    assert check_site.broken_links(pages, _site(tmp_path), base) == []


def test_a_link_to_a_missing_page_is_broken(tmp_path):
    pages, base = _pages(bad="notebooks/b.html")
    assert check_site.broken_links(pages, _site(tmp_path), base) == ["index.html: broken link to notebooks/b.html"]


def test_a_link_to_a_missing_anchor_is_broken(tmp_path):
    pages, base = _pages(bad="notebooks/a.html#gone")
    problems = check_site.broken_links(pages, _site(tmp_path), base)
    assert problems == ["index.html: broken link to notebooks/a.html#gone (no such anchor)"]


def test_a_link_outside_the_site_is_not_followed(tmp_path):
    pages, _ = _pages()
    pages["index.html"].links = ["https://arxiv.org/abs/2407.12383"]
    assert check_site.broken_links(pages, _site(tmp_path), "http://127.0.0.1:1/") == []


# --- Sphinx and the browser ---------------------------------------------------------------------


def _have_browser() -> bool:
    return importlib.util.find_spec("playwright") is not None and bool(shutil.which("chromium"))


@pytest.fixture(scope="module")
def small_book(tmp_path_factory):
    """The two-notebook repository rendered by book/build.py (not executed)."""
    pytest.importorskip("myst_nb")
    root = _repo(tmp_path_factory.mktemp("repo"))
    with pytest.MonkeyPatch.context() as mp:  # main() sets defaults in os.environ: keep them out of the session
        for name in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS"):
            mp.setenv(name, os.environ.get(name, "1" if name != "TOKENIZERS_PARALLELISM" else "false"))
        assert build.main(["--root", str(root), "--no-execute"]) == 0
    return root / "build" / "book"


def test_a_link_between_notebooks_lands_on_the_page(small_book):
    html = (small_book / "notebooks" / "01_first.html").read_text()
    assert 'href="02_second.html#a-section"' in html


def test_the_book_shows_show_solution_on_the_solution_only(small_book):
    html = (small_book / "notebooks" / "02_second.html").read_text()
    assert html.count("Show solution") == 1


@pytest.mark.skipif(not _have_browser(), reason="needs playwright (pip) and Chromium (apt-get install chromium)")
def test_the_small_book_passes_the_browser_check(small_book, tmp_path):
    assert check_site.main(["--site", str(small_book), "--shots", str(tmp_path)]) == 0


@pytest.mark.skipif(not _have_browser(), reason="needs playwright (pip) and Chromium (apt-get install chromium)")
def test_the_browser_check_fails_a_broken_page(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        "<html><head><link rel='icon' href='data:,'></head><body>"
        "<img src='missing.png'><a href='nowhere.html'>x</a><script>console.error('boom')</script></body></html>"
    )
    assert check_site.main(["--site", str(site), "--shots", str(tmp_path / "shots")]) == 1
    out = capsys.readouterr().out
    assert "missing image: missing.png" in out
    assert "broken link to nowhere.html" in out
    assert "console error: boom" in out


def test_execute_all_runs_notebooks_side_by_side_in_course_order(tmp_path):
    """Two workers execute two notebooks, each in its own kernel; the result keeps the course's order."""
    paths = []
    for name, value in (("01_first.ipynb", 1), ("02_second.ipynb", 2)):
        nb = new_notebook(cells=[new_code_cell(f"import os\nx = {value}"), new_code_cell("print(x * 10, os.getpid())")],
                          metadata=PYTHON)  # fmt: skip
        nbformat.write(nb, tmp_path / name)
        paths.append(tmp_path / name)
    done = build.execute_all(tuple(paths), tmp_path / "cache", "fp", timeout=120, workers=2)
    assert list(done) == paths
    printed = [done[p].cells[1].outputs[0].text.split() for p in paths]
    assert [words[0] for words in printed] == ["10", "20"]
    assert printed[0][1] != printed[1][1], "both notebooks ran in one kernel"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["01_first.ipynb", "02_second.ipynb"]


def test_execute_all_names_the_notebook_that_fails(tmp_path):
    good = new_notebook(cells=[new_code_cell("x = 1")], metadata=PYTHON)
    bad = new_notebook(cells=[new_code_cell("raise RuntimeError('boom')")], metadata=PYTHON)
    nbformat.write(good, tmp_path / "01_good.ipynb")
    nbformat.write(bad, tmp_path / "02_bad.ipynb")
    with pytest.raises(SystemExit, match="02_bad.ipynb failed.*boom"):
        build.execute_all((tmp_path / "01_good.ipynb", tmp_path / "02_bad.ipynb"), tmp_path / "c", "fp", 120, 2)
    with pytest.raises(SystemExit, match="--workers must be >= 1"):
        build.execute_all((tmp_path / "01_good.ipynb",), tmp_path / "c", "fp", 120, 0)
