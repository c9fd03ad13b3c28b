"""Sphinx configuration of the course book (``make book`` runs ``book/build.py``, which uses it).

The sources are staged by ``book/build.py`` under ``build/book-src/`` (the executed notebooks, the
index, the markdown pages); this file is passed with ``-c book``. Notebooks arrive executed, so
myst-nb only renders them. Everything the pages load is served from the site itself: MathJax comes
from the ``sphinx-mathjax-offline`` package and ipywidgets' JavaScript is left out (the static site
shows each widget's picture), so the book reads offline and its browser test sees no network.
"""

from __future__ import annotations

project = "rece-lite: concept erasure, step by step"
author = "the rece-lite authors"
copyright = "the rece-lite authors (MIT)"

# sphinx-mathjax-offline copies MathJax 3 into the site and points mathjax_path at it (no CDN).
extensions = ["myst_nb", "sphinx-mathjax-offline"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# The notebooks are executed once by book/build.py (cached there), never by Sphinx.
nb_execution_mode = "off"
nb_output_stderr = "remove"  # progress bars and warnings: noise on a page
nb_merge_streams = True
nb_ipywidgets_js = {}  # no require.js / widget manager from a CDN; widgets show their picture
# A widget's own view needs its JavaScript: render the picture a widget bundle carries instead.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_code_prompt_show = "Show code cell {type}"
nb_code_prompt_hide = "Hide code cell {type}"

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](02_meet_the_model.ipynb#a-heading) lands on the heading
suppress_warnings = ["myst.header"]  # a notebook may step from # to ###; that is not a broken page

html_theme = "sphinx_book_theme"
html_title = "rece-lite course"
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_last_updated_fmt = None
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "home_page_in_toc": True,
}
html_show_sourcelink = False
html_favicon = "_static/favicon.svg"  # else the browser asks for /favicon.ico, and gets a 404
html_context = {"default_mode": "light"}  # an unset mode makes the theme log an error in the console
smartquotes = False  # the text as the notebook has it: "red"'s stays "red"'s
