"""Drive the live attention explorer of notebook 06 in JupyterLab, in headless Chromium.

    python book/check_lab.py                  # screenshots in build/lab-screenshots/

Steps:
1. Copy the notebook, up to the cell that shows ``viz.attention_explorer``, into a temporary folder
   (JupyterLab autosaves what it opens; ``notebooks/`` is never touched).
2. Start JupyterLab headless on a free localhost port with a random token, run those cells.
3. In the page, change the layer, the step and the token; each must redraw the picture (its ``src``
   changes) within a few seconds.
4. Pick a word both prompts share, change the prompt: the picture redraws and the picked word stays
   selected (it does not jump back to the first token).

Exit status 1 with a one-line reason on the first failure, 0 when the explorer works. The server and
its kernel are always shut down.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
from browser import chromium

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_attention_maps.ipynb"
EXPLORER_CALL = "attention_explorer("
REDRAW_S = 10.0  # a control must redraw the picture within this: about 0.5 s on a quiet CPU, up to 5 s on a busy one


class Failure(Exception):
    """One reason the check failed, said in one line."""


def notebook_up_to_explorer(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` cut after the first code cell that calls the explorer, outputs cleared."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and EXPLORER_CALL in "".join(cell.source):
            nb.cells = nb.cells[: i + 1]
            for c in nb.cells:
                if c.cell_type == "code":
                    c.outputs, c.execution_count = [], None
            return nb
    raise Failure(f"{path.name} has no code cell calling {EXPLORER_CALL}...)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(folder: Path, log: Path, timeout: float = 120):
    """JupyterLab serving ``folder`` on localhost; yields ``(base_url, token)``; stopped (with its kernels) on exit."""
    port, token = _free_port(), secrets.token_hex(16)
    home = folder / ".jupyter-home"  # fresh settings, workspaces and runtime files: nothing of the user's
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no news pop-up over the screenshots
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
        "--LabApp.expose_app_in_browser=True",  # the page then has window.jupyterapp, to run the cells
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly", "--allow-root",  # CI runs as root
    ]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise Failure(f"JupyterLab exited at start (exit {server.returncode}); see {log}")
            try:
                with urllib.request.urlopen(f"{base}api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failure(f"JupyterLab did not answer on {base} within {timeout:.0f} s; see {log}")
            time.sleep(0.5)
        yield base, token
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the server and its kernels), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --- in the page -------------------------------------------------------------------------------

RUN_ALL = """async () => {
  const app = window.jupyterapp;
  const panel = app.shell.currentWidget;
  await panel.context.ready;
  await panel.sessionContext.ready;
  app.commands.execute('notebook:run-all-cells');  // not awaited: the Python side polls for the explorer
  return panel.content.widgets.length;
}"""

CELL_ERRORS = """() => {
  const errors = [];
  for (const cell of window.jupyterapp.shell.currentWidget.content.widgets) {
    if (cell.model.type !== 'code') continue;
    for (const out of cell.model.outputs.toJSON())
      if (out.output_type === 'error') errors.push(`${out.ename}: ${out.evalue}`);
  }
  return errors;
}"""

PROGRESS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const ran = cells.filter(c => c.model.executionCount !== null).length;
  return `${ran} of ${cells.length} code cells run, kernel ${panel.sessionContext.kernelDisplayStatus}`;
}"""


def _labelled(scope, name: str):
    """ipywidgets' label element with the text ``name`` (a control's description), inside ``scope``."""
    return scope.locator("label.widget-label", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$"))


def find_explorer(page):
    """The notebook cell that shows the explorer (the one with a control labelled "layer"), or None."""
    cells = page.locator(".jp-CodeCell").filter(has=_labelled(page, "layer"))
    return cells.last if cells.count() else None


def wait_for_explorer(page, timeout_s: float):
    """Wait until the cells have run and the explorer shows a picture; fail on a cell error."""
    deadline = time.monotonic() + timeout_s
    said = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() - said > 30:
            print(f"lab-test: {page.evaluate(PROGRESS)}", flush=True)
            said = time.monotonic()
        errors = page.evaluate(CELL_ERRORS)
        if errors:
            raise Failure(f"a cell of notebook 06 raised {errors[0][:200]}")
        explorer = find_explorer(page)
        if explorer is not None and explorer.locator(".widget-output img, .jupyter-widgets-output-area img").count():
            return explorer
        page.wait_for_timeout(1000)
    raise Failure(f"the explorer did not appear within {timeout_s:.0f} s of running the cells")


def control(explorer, name: str):
    """The ``<select>`` or slider of the explorer's control labelled ``name``."""
    box = explorer.locator(".widget-inline-hbox").filter(has=_labelled(explorer.page, name))
    if not box.count():
        raise Failure(f"the explorer has no control labelled {name!r}")
    return box.first


def picture_src(explorer) -> str:
    img = explorer.locator(".jupyter-widgets-output-area img, .widget-output img")
    if not img.count():
        raise Failure("the explorer shows no picture")
    return img.first.get_attribute("src") or ""


def expect_redraw(explorer, before: str, what: str) -> float:
    """Seconds until the picture's ``src`` differs from ``before``; a Failure after ``REDRAW_S``."""
    start = time.monotonic()
    while time.monotonic() - start < REDRAW_S:
        try:
            if picture_src(explorer) != before:
                return time.monotonic() - start
        except Failure:
            pass  # between clear_output and the new picture
        explorer.page.wait_for_timeout(50)
    raise Failure(f"changing the {what} did not redraw the picture within {REDRAW_S:.0f} s")


def _show(text: str) -> str:
    """ipywidgets writes option labels with no-break spaces: plain ones for messages."""
    return text.replace("\xa0", " ")


def selected_word(explorer, name: str = "token") -> str:
    text = control(explorer, name).locator("select").evaluate("s => s.options[s.selectedIndex].text")
    return re.sub(r"^\d+:\s*", "", text)


def options(explorer, name: str) -> list[str]:
    return control(explorer, name).locator("select option").all_inner_texts()


def drive(page, explorer, shots: Path) -> list[str]:
    """Move every control; returns one line per step with its redraw time."""
    done = []
    page.screenshot(path=shots / "lab_0_explorer.png", full_page=False)
    explorer.scroll_into_view_if_needed()
    explorer.screenshot(path=shots / "lab_1_initial.png")

    # layer: the next option
    before = picture_src(explorer)
    layers = options(explorer, "layer")
    if len(layers) < 2:
        raise Failure("the layer control offers fewer than two layers")
    control(explorer, "layer").locator("select").select_option(index=1)
    done.append(f"layer -> '{_show(layers[1])}': redrawn in {expect_redraw(explorer, before, 'layer'):.2f} s")
    explorer.screenshot(path=shots / "lab_2_layer.png")

    # step: the slider's handle, one step to the right by keyboard
    before = picture_src(explorer)
    handle = control(explorer, "step").locator(".noUi-handle, .ui-slider-handle, input[type=range]").first
    handle.focus()
    handle.press("ArrowRight")
    readout = control(explorer, "step").locator(".widget-readout").first.inner_text()
    done.append(f"step -> '{_show(readout)}': redrawn in {expect_redraw(explorer, before, 'step'):.2f} s")
    explorer.screenshot(path=shots / "lab_3_step.png")

    # token, then prompt: pick a word the other prompt has too, not at position 1, then switch prompts
    prompts = options(explorer, "prompt")
    if len(prompts) < 2:
        raise Failure("the prompt control offers fewer than two prompts")
    current = control(explorer, "prompt").locator("select").evaluate("s => s.options[s.selectedIndex].text")
    other = next(p for p in prompts if p != current)
    shared = [w for w in current.split() if w in other.split() and w != current.split()[0]]
    if not shared:
        pair = f"'{_show(current)}' and '{_show(other)}'"
        raise Failure(f"prompts {pair} share no word after the first: cannot test that the picked word is kept")
    word = shared[-1]
    tokens = options(explorer, "token")
    pick = next((t for t in tokens if re.sub(r"^\d+:\s*", "", t) == word), None)
    if pick is None:
        raise Failure(f"the token control has no '{_show(word)}' for '{_show(current)}'")
    before = picture_src(explorer)
    control(explorer, "token").locator("select").select_option(label=pick)
    done.append(f"token -> '{_show(pick)}': redrawn in {expect_redraw(explorer, before, 'token'):.2f} s")
    explorer.screenshot(path=shots / "lab_4_token.png")

    before = picture_src(explorer)
    control(explorer, "prompt").locator("select").select_option(label=other)
    took = expect_redraw(explorer, before, "prompt")
    page.wait_for_timeout(300)  # the token list arrives with the picture; let the select settle
    kept = selected_word(explorer)
    explorer.screenshot(path=shots / "lab_5_prompt.png")
    if kept != word:
        said = f"the token is '{_show(kept)}', not the picked '{_show(word)}'"
        raise Failure(f"after changing the prompt to '{_show(other)}' {said}")
    done.append(f"prompt -> '{_show(other)}': redrawn in {took:.2f} s, picked word '{_show(word)}' kept")
    return done


def _keep_evidence(page, shots: Path) -> None:
    """A screenshot of the page and the HTML of the last output, for a failed run (best effort)."""
    try:
        page.screenshot(path=shots / "lab_failed.png", full_page=False)
        outputs = page.locator(".jp-OutputArea-output")
        if outputs.count():
            (shots / "lab_failed.html").write_text(outputs.last.inner_html())
    except Exception:  # the page may be gone: the failure itself is what matters
        pass


def _exit_on_sigterm(signum, frame):
    raise Failure("stopped by SIGTERM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--shots", type=Path, default=ROOT / "build" / "lab-screenshots")
    parser.add_argument("--chromium", help="the browser (default: $CHROMIUM, else chromium on the PATH)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the cells to run (default 900)")
    args = parser.parse_args(argv)
    args.shots.mkdir(parents=True, exist_ok=True)
    for old in args.shots.glob("lab_*"):
        old.unlink()

    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # `timeout` and CI stop us: still shut the server down
    start = time.perf_counter()
    console: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="rece-lite-lab-") as tmp:
            folder = Path(tmp)
            nb = notebook_up_to_explorer(args.notebook)
            nbformat.write(nb, folder / args.notebook.name)
            log = args.shots / "jupyterlab.log"
            with jupyterlab(folder, log) as (base, token), chromium(args.chromium) as context:
                page = context.new_page()
                page.on("console", lambda m: m.type == "error" and console.append(m.text[:200]))
                page.on("pageerror", lambda e: console.append(f"uncaught: {str(e)[:200]}"))
                page.goto(f"{base}lab/tree/{args.notebook.name}?token={token}", timeout=120_000)
                page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget", timeout=120_000)
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
                cells = page.evaluate(RUN_ALL)
                print(f"lab-test: running {cells} cells of {args.notebook.name}", flush=True)
                try:
                    explorer = wait_for_explorer(page, args.timeout)
                    print(f"lab-test: explorer shown after {time.perf_counter() - start:.0f} s", flush=True)
                    for line in drive(page, explorer, args.shots):
                        print(f"lab-test: {line}", flush=True)
                    page.screenshot(path=args.shots / "lab_6_page.png", full_page=False)
                except Exception:
                    _keep_evidence(page, args.shots)
                    raise
    except Exception as e:  # one line says why; the screenshot and the server's log say the rest
        said = str(e) if isinstance(e, Failure) else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        print(f"lab-test: FAIL {_show(said)}")
        return 1
    for line in console:
        print(f"lab-test: note: console error in JupyterLab: {line}")
    print(f"lab-test: the explorer works ({time.perf_counter() - start:.0f} s); screenshots in {args.shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
