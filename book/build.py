"""Build the course as a static site: each notebook executed once (cached), rendered by Sphinx + myst-nb.

    python book/build.py                 # -> build/book/index.html
    python book/build.py --no-execute    # the pages without outputs, in seconds (for trying the site)

Steps:
1. Find the pages: ``notebooks/*.ipynb`` in order, then the markdown pages under ``notebooks/`` and
   ``docs/`` (a glossary first).
2. Execute each notebook in ``notebooks/`` (its own folder as working directory, as nbval does) unless
   ``build/book-cache/`` holds a run of the same code against the same library and model files.
3. Stage the sources under ``build/book-src/`` with the folder layout of the repository, so a link
   such as ``02_meet_the_model.ipynb`` or ``../docs/mmdit.md`` lands on its page; widget outputs keep
   the picture they carry; solution cells get a "Show solution" toggle.
4. ``sphinx-build`` with ``book/conf.py``, warnings as errors, into ``build/book/``.

Nothing under ``notebooks/`` is written: the executed copies live in ``build/book-cache/``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BOOK = Path(__file__).resolve().parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PICTURES = ("image/png", "image/jpeg", "image/svg+xml")
ASSETS = (".md", ".png", ".jpg", ".jpeg", ".gif", ".svg")  # copied beside the pages that link them
LIBRARY = ("rece_lite", "data")  # what an executed notebook depends on, besides its own code


@dataclass(frozen=True)
class Course:
    """The pages of the book, in reading order.

    Attributes:
        notebooks: ``notebooks/*.ipynb``, sorted by name (01_, 02_, ...).
        pages: markdown pages under ``notebooks/`` and ``docs/``, a glossary first.
    """

    notebooks: tuple[Path, ...]
    pages: tuple[Path, ...]


def find_course(root: Path) -> Course:
    """The notebooks and markdown pages of the repository at ``root``."""
    notebooks = tuple(sorted((root / "notebooks").glob("*.ipynb")))
    if not notebooks:
        raise SystemExit(f"book: no notebooks in {root / 'notebooks'}; run from a checkout of rece-lite")
    pages = [p for d in ("notebooks", "docs") for p in sorted((root / d).rglob("*.md")) if _is_page(p, root)]
    pages.sort(key=lambda p: "glossary" not in p.stem.lower())  # stable: the glossary first, else as found
    return Course(notebooks, tuple(pages))


def _is_page(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not any(part.startswith((".", "_")) for part in parts)


def library_fingerprint(root: Path) -> str:
    """A hash of every file an executed notebook depends on besides its own code (the package, the model)."""
    h = hashlib.sha256()
    for top in LIBRARY:
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                h.update(str(path.relative_to(root)).encode())
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def notebook_key(nb: nbformat.NotebookNode, fingerprint: str) -> str:
    """The cache key of one run: the code cells' sources (not outputs or metadata) and the library."""
    h = hashlib.sha256(fingerprint.encode())
    for cell in nb.cells:
        h.update(cell.cell_type.encode() + b"\0" + "".join(cell.source).encode() + b"\0")
    return h.hexdigest()


def execute(path: Path, cache: Path, fingerprint: str, timeout: int) -> nbformat.NotebookNode:
    """The notebook at ``path``, executed in its own folder; reused from ``cache`` when its key matches.

    Args:
        path: a notebook under ``notebooks/``.
        cache: folder of executed copies (``build/book-cache``).
        fingerprint: ``library_fingerprint(root)``.
        timeout: seconds one cell may run.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    key = notebook_key(nb, fingerprint)
    done = cache / path.name
    if done.exists():
        old = nbformat.read(done, as_version=4)
        if old.metadata.get("rece_lite_book", {}).get("key") == key:
            print(f"book: {path.name}: cached", flush=True)
            return old
    start = time.perf_counter()
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as e:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # tracebacks come coloured
        last = [line for line in plain.strip().splitlines() if line.strip()][-1:]
        raise SystemExit(f"book: {path.name} failed: {' '.join(last)[:300]}") from e
    seconds = time.perf_counter() - start
    nb.metadata["rece_lite_book"] = {"key": key, "seconds": round(seconds, 1)}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    tmp.replace(done)
    print(f"book: {path.name}: executed in {seconds:.0f} s", flush=True)
    return nb


def for_the_page(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` as the static page shows it.

    - A widget output keeps the picture its bundle carries (the attention explorer attaches a PNG of
      its first view); one without a picture (a progress bar) is dropped: it needs a live kernel.
    - A solution cell (tag ``hide-input`` with ``jupyter.source_hidden`` or the tag ``solution``)
      folds its code behind "Show solution".
    - Markdown a cell printed (``course.say``) is not read by Sphinx as a document, so its relative
      links to other pages of the course (``04_deriving_embeddings.ipynb``, ``glossary.md#guide``)
      are pointed at the pages' HTML here.
    """
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [_static_output(o) for o in cell.outputs if _has_static_view(o)]
        for o in cell.outputs:
            if "text/markdown" in o.get("data", {}):
                o.data["text/markdown"] = html_links(o.data["text/markdown"])
        if is_solution(cell):
            cell.metadata.setdefault("mystnb", {}).update(
                code_prompt_show="Show solution", code_prompt_hide="Hide solution"
            )
    return nb


_PAGE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|/|#)([^)#\s]+)\.(?:ipynb|md)(#[^)\s]*)?\)")


def html_links(markdown: str) -> str:
    """``[text](page.ipynb#anchor)`` and ``[text](page.md)`` as links to the built pages (``page.html``)."""
    return _PAGE_LINK.sub(lambda m: f"]({m.group(1)}.html{m.group(2) or ''})", markdown)


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """Whether a code cell holds an exercise's worked solution (see :func:`for_the_page`)."""
    tags = cell.metadata.get("tags", [])
    hidden = cell.metadata.get("jupyter", {}).get("source_hidden", False)
    return "solution" in tags or ("hide-input" in tags and hidden)


def _has_static_view(output: nbformat.NotebookNode) -> bool:
    data = output.get("data", {})
    return WIDGET_VIEW not in data or any(m in data for m in PICTURES)


def _static_output(output: nbformat.NotebookNode) -> nbformat.NotebookNode:
    if WIDGET_VIEW in output.get("data", {}):
        output = copy.deepcopy(output)
        output.data = {m: v for m, v in output.data.items() if m in PICTURES or m == "text/plain"}
    return output


def index_markdown(intro: str, course: Course, root: Path) -> str:
    """The home page: ``book/intro.md`` followed by the table of contents."""

    def toctree(caption: str, paths: Iterable[Path]) -> str:
        entries = "\n".join(p.relative_to(root).with_suffix("").as_posix() for p in paths)
        return f"```{{toctree}}\n:caption: {caption}\n:maxdepth: 1\n\n{entries}\n```\n"

    parts = [intro.rstrip() + "\n", toctree("The course", course.notebooks)]
    if course.pages:
        parts.append(toctree("Reference", course.pages))
    return "\n".join(parts)


def stage(course: Course, executed: dict[Path, nbformat.NotebookNode], root: Path, src: Path) -> None:
    """Write the Sphinx sources under ``src``, with the repository's folder layout."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for folder in ("notebooks", "docs"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix.lower() in ASSETS and _is_page(path, root):
                (src / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / path.relative_to(root))
    for path in course.notebooks:
        (src / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(for_the_page(executed[path]), src / path.relative_to(root))
    intro = (BOOK / "intro.md").read_text(encoding="utf-8")
    (src / "index.md").write_text(index_markdown(intro, course, root), encoding="utf-8")


def sphinx(src: Path, out: Path, doctrees: Path) -> None:
    """Render ``src`` into ``out`` (warnings are errors: a broken link between pages fails the build)."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(BOOK), "-E", "-W", "--keep-going", "-q"]
    done = subprocess.run([*cmd, "-d", str(doctrees), str(src), str(out)])
    if done.returncode:
        raise SystemExit(f"book: sphinx-build failed (exit {done.returncode}); its warnings are above")


def execute_all(
    notebooks: tuple[Path, ...], cache: Path, fingerprint: str, timeout: int, workers: int
) -> dict[Path, nbformat.NotebookNode]:
    """Every notebook through :func:`execute`, ``workers`` at a time (each in its own process and kernel).

    The notebooks are independent (each loads what it needs), so running two at once on a 2-core
    machine halves the book's time; the result keeps the course's order whatever finishes first.
    """
    if workers < 1:
        raise SystemExit(f"book: --workers must be >= 1, got {workers}")
    if workers == 1 or len(notebooks) < 2:
        return {p: execute(p, cache, fingerprint, timeout) for p in notebooks}
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {p: pool.submit(execute, p, cache, fingerprint, timeout) for p in notebooks}
        return {p: futures[p].result() for p in notebooks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this checkout)")
    parser.add_argument("--out", type=Path, help="the site (default: ROOT/build/book)")
    parser.add_argument("--no-execute", action="store_true", help="render the notebooks as they are")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default 1800)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("NOTEBOOK_WORKERS") or 1),
                        help="notebooks executed at once, one kernel each (default: $NOTEBOOK_WORKERS or 1)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    build = root / "build"
    out = (args.out or build / "book").resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the course never downloads: it runs on the embedded model
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One thread unless told otherwise: the miniature model's ops are small, and OpenMP threads that
    # wait for a busy core can slow a notebook many times over.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    start = time.perf_counter()
    course = find_course(root)
    if args.no_execute:
        executed = {p: nbformat.read(p, as_version=4) for p in course.notebooks}
    else:
        fingerprint = library_fingerprint(root)
        executed = execute_all(course.notebooks, build / "book-cache", fingerprint, args.timeout, args.workers)
    stage(course, executed, root, build / "book-src")
    sphinx(build / "book-src", out, build / "book-doctrees")
    print(f"book: {out / 'index.html'} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
