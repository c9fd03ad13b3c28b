"""What the book's browser checks share: Debian's Chromium driven by Playwright, and a local web server.

Playwright comes from pip; its own browser download is never used (``playwright install`` needs a
network this project does not have). The browser is the system's Chromium (Debian: ``apt-get install
chromium``), started with flags that keep it off the network, in a fresh profile each time.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # small /dev/shm in containers
)
VIEWPORT = {"width": 1280, "height": 900}


def find_chromium(path: str | None = None) -> str:
    """The Chromium to drive: ``path``, else ``$CHROMIUM``, else ``chromium`` on the PATH."""
    found = path or os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        raise SystemExit("no Chromium found: install Debian's (apt-get install -y chromium) or pass --chromium PATH")
    return found


@contextlib.contextmanager
def chromium(path: str | None = None) -> Iterator:
    """A Playwright ``Browser`` on the system's Chromium, with a fresh profile; closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("playwright is missing: pip install -e '.[book]' (the browser comes from apt)") from None
    executable = find_chromium(path)
    with tempfile.TemporaryDirectory(prefix="rece-lite-chromium-") as profile, sync_playwright() as p:
        # launch_persistent_context is the one way to name the profile folder; a context is all we need
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport=VIEWPORT,
            service_workers="block",
        )
        try:
            yield context
        finally:
            context.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a free localhost port; yields its base URL (``http://127.0.0.1:PORT/``)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
