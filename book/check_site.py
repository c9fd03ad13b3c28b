"""Open every page of the built book in headless Chromium; fail on anything a reader would see broken.

    python book/check_site.py                        # the site in build/book/
    python book/check_site.py --site DIR --shots DIR

For each page (served on localhost): no console error, no uncaught exception, no failed request,
every image loaded (``naturalWidth > 0``), every formula typeset by MathJax, and every link inside
the site lands on a file that exists and, with a ``#fragment``, on an element with that id. A
full-page screenshot of each page goes to ``build/book-screenshots/``. Exit status 1 with one line
per problem, 0 when the site is clean.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

from browser import chromium, serve

ROOT = Path(__file__).resolve().parents[1]
SKIP = ("_static", "_sources", "_images", "_downloads")  # assets, not pages
PAGE_TIMEOUT_MS = 60_000

# Resolves when the page's images have loaded (or failed) and MathJax has typeset; returns what a
# reader would see broken.
INSPECT = """async () => {
  const within = (ms, promise) => Promise.race([promise, new Promise(done => setTimeout(done, ms))]);
  for (const img of document.images) img.loading = 'eager';
  await within(20000, Promise.all(Array.from(document.images, img => img.decode().catch(() => null))));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await within(30000, MathJax.startup.promise);
  const math = Array.from(document.querySelectorAll('span.math.notranslate, div.math.notranslate'));
  const typeset = m => m.querySelector('.MathJax, .MathJax_Display, .MathJax_SVG, mjx-container');
  return {
    broken_images: Array.from(document.images)
      .filter(img => !img.complete || img.naturalWidth === 0)
      .map(img => img.getAttribute('src')),
    math_errors: document.querySelectorAll('.MathJax_Error, .merror, mjx-merror').length,
    math_untypeset: math.filter(m => !typeset(m)).length,
    math_total: math.length,
    images: document.images.length,
    ids: Array.from(document.querySelectorAll('[id], a[name]'), e => e.id || e.getAttribute('name')),
    links: Array.from(document.querySelectorAll('a[href]'), a => a.href),
  };
}"""


@dataclass
class Page:
    """What one visit found."""

    path: str
    problems: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)
    images: int = 0
    formulas: int = 0


def pages_of(site: Path) -> list[str]:
    """The site's HTML pages, as paths relative to ``site`` (``index.html`` first)."""
    found = [
        p.relative_to(site).as_posix() for p in sorted(site.rglob("*.html")) if p.relative_to(site).parts[0] not in SKIP
    ]
    return sorted(found, key=lambda p: (p != "index.html", p))


def screenshot_name(path: str) -> str:
    """``notebooks/01_x.html`` -> ``notebooks__01_x.png``."""
    return path.removesuffix(".html").replace("/", "__") + ".png"


def _said(message) -> str:
    where = message.location.get("url", "") if message.location else ""
    return message.text[:200] + (f" ({where})" if where else "")


def visit(context, base: str, path: str, shots: Path) -> Page:
    """Load one page, collect its problems, ids and links, save its screenshot."""
    page = Page(path)
    tab = context.new_page()
    tab.on("console", lambda m: m.type == "error" and page.problems.append(f"console error: {_said(m)}"))
    tab.on("pageerror", lambda e: page.problems.append(f"uncaught exception: {str(e)[:200]}"))
    tab.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url} ({r.failure})"))
    tab.on("response", lambda r: r.status >= 400 and page.problems.append(f"HTTP {r.status}: {r.url}"))
    try:
        tab.goto(base + path, wait_until="load", timeout=PAGE_TIMEOUT_MS)
        found = tab.evaluate(INSPECT)
        page.problems += [f"missing image: {src}" for src in found["broken_images"]]
        if found["math_errors"]:
            page.problems.append(f"{found['math_errors']} formula(s) failed to typeset")
        if found["math_untypeset"]:
            page.problems.append(f"{found['math_untypeset']} of {found['math_total']} formula(s) not typeset")
        page.ids, page.links = set(found["ids"]), found["links"]
        page.images, page.formulas = found["images"], found["math_total"]
        tab.screenshot(path=shots / screenshot_name(path), full_page=True, timeout=PAGE_TIMEOUT_MS)
    except Exception as e:  # a page that does not load is one problem, not the end of the run
        page.problems.append(f"could not load: {str(e).splitlines()[0][:200]}")
    finally:
        tab.close()
    return page


def broken_links(pages: dict[str, Page], site: Path, base: str) -> list[str]:
    """Links inside the site whose file is missing, or whose ``#fragment`` names no element there."""
    problems = []
    for page in pages.values():
        for link in sorted(set(page.links)):
            url, fragment = urldefrag(link)
            if not url.startswith(base):
                continue  # outside the site (the book does not test the internet)
            target = unquote(urlsplit(url).path).removeprefix(urlsplit(base).path)
            if target == "" or target.endswith("/"):
                target += "index.html"
            if not (site / target).is_file():
                problems.append(f"{page.path}: broken link to {target}")
            elif fragment and target in pages and unquote(fragment) not in pages[target].ids:
                problems.append(f"{page.path}: broken link to {target}#{fragment} (no such anchor)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "build" / "book")
    parser.add_argument("--shots", type=Path, default=ROOT / "build" / "book-screenshots")
    parser.add_argument("--chromium", help="the browser (default: $CHROMIUM, else chromium on the PATH)")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"book-test: no site at {args.site} (run `make book` first)", file=sys.stderr)
        return 1
    args.shots.mkdir(parents=True, exist_ok=True)
    for old in args.shots.glob("*.png"):
        old.unlink()

    start = time.perf_counter()
    pages: dict[str, Page] = {}
    with serve(args.site) as base, chromium(args.chromium) as context:
        for path in pages_of(args.site):
            t = time.perf_counter()
            pages[path] = p = visit(context, base, path, args.shots)
            status = "ok" if not p.problems else f"{len(p.problems)} problem(s)"
            took = time.perf_counter() - t
            print(f"book-test: {path}: {p.images} images, {p.formulas} formulas, {status} ({took:.1f} s)", flush=True)
        problems = [f"{p.path}: {problem}" for p in pages.values() for problem in p.problems]
        problems += broken_links(pages, args.site, base)
    for problem in problems:
        print(f"book-test: FAIL {problem}")
    seconds = time.perf_counter() - start
    print(f"book-test: {len(pages)} pages, {len(problems)} problems, screenshots in {args.shots} ({seconds:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
