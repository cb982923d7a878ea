"""The notebooks in a real browser: JupyterLab on 127.0.0.1 with a token, headless Debian chromium through
Playwright. notebooks/04_generation.ipynb: Run All Cells, Generate, and story text must appear; then turn
steering on (a steered story appears beside it, same seed) and drag the strength slider: the steered text
must change while the unsteered one stays.
notebooks/00_start_here.ipynb: Run All Cells, and its environment check must pass on the page.
tinylib.widgets.token_views in a notebook the test writes: hover two tokens of the reference model's attention
view; the shaded targets must be each query's row of the model's own pattern (argmax included), per head in
the all-heads grid and per layer; the token view's hover shows the value.

Needs the `chromium` Debian package (/usr/bin/chromium) and the `playwright` Python package (no browser
download: Playwright drives the system chromium). When either is missing the test FAILS and says what to
install; set TINYLIB_SKIP_BROWSER=1 to skip it on purpose. The screenshot goes to the test's tmp_path and is
copied to runs/browser/story_generator.png (gitignored), whose path is printed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
import torch

from tinylib.widgets.models import open_model

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_generation.ipynb"
START = ROOT / "notebooks" / "00_start_here.ipynb"
CHROMIUM = Path(os.environ.get("TINYLIB_CHROMIUM", "/usr/bin/chromium"))
ARTIFACT = ROOT / "runs" / "browser" / "story_generator.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.browser


def _requirements():
    if os.environ.get("TINYLIB_SKIP_BROWSER") == "1":
        pytest.skip("TINYLIB_SKIP_BROWSER=1: the browser test was skipped on purpose")
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"no chromium at {CHROMIUM}: install it with `apt-get install -y chromium` "
                        "(or point TINYLIB_CHROMIUM at a chromium binary)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        problems.append("the playwright Python package is missing: `pip install playwright` "
                        "(the '[dev]' extra has it; no `playwright install` is needed, "
                        "the test drives the system chromium)")
    if problems:
        pytest.fail("browser test cannot run: " + "; ".join(problems), pytrace=False)
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}",
                        pytrace=False)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}",
                pytrace=False)


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server whose root is a temp copy
    (the committed notebook never gets outputs saved into it)."""
    _requirements()  # fail (or skip) before starting a server for nothing
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    for notebook in (NOTEBOOK, START):
        shutil.copy(notebook, root / "notebooks" / notebook.name)
    if (ROOT / "checkpoints").is_dir():  # the notebook looks in ../checkpoints, as in the repo
        (root / "checkpoints").symlink_to(ROOT / "checkpoints")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "TINYLIB_SMOKE": "1", "TINYLIB_SOLUTIONS": "1", "OMP_NUM_THREADS": "1",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "IPYTHONDIR": str(tmp_path / "ipython")}
    jupyter = Path(sys.executable).with_name("jupyter")
    log = tmp_path / "jupyterlab.log"
    cmd = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={tmp_path / 'lab-settings'}",
           f"--LabApp.workspaces_dir={tmp_path / 'lab-workspaces'}",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.port_retries=0"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log)
        yield f"http://127.0.0.1:{port}", token, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernel it started, nothing else
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _wait_for_idle_kernel(page, timeout: float = 180) -> None:
    """Accept JupyterLab's "Select Kernel" dialog if it shows (python3 is preselected), then wait for Idle."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        select = page.locator(".jp-Dialog button", has_text="Select")
        if select.count() and select.first.is_visible():
            select.first.click()
        elif page.locator(".jp-Dialog").count() == 0 and \
                "Idle" in (page.locator(".jp-StatusBar-Widget", has_text="|").first.text_content() or ""):
            return
        time.sleep(0.3)
    raise TimeoutError(f"the notebook's kernel did not become idle within {timeout} s")


def _run_all_cells(page, base: str, token: str, notebook: Path) -> None:
    """Open `notebook` in JupyterLab, wait for its kernel, and press Run > Run All Cells."""
    page.goto(f"{base}/lab/tree/notebooks/{notebook.name}?token={token}", timeout=45_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=45_000)
    _wait_for_idle_kernel(page)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")


@contextmanager
def _page(playwright, tmp_path: Path, log: Path):
    """A chromium page; on failure a screenshot and the end of JupyterLab's log are kept for the report."""
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        yield page
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(f"failure screenshot: {tmp_path / 'failure.png'}\nJupyterLab log:\n{log.read_text()[-3000:]}")
        raise
    finally:
        browser.close()


def _wait_for_new_text(page, selector: str, old: str, timeout: float = 30) -> str:
    """The text of the last output under `selector` once it is a finished story different from `old`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = page.locator(f"{selector} .widget-html").last.inner_text()
        text = page.locator(f"{selector} .jp-OutputArea-output").last.inner_text() \
            if page.locator(f"{selector} .jp-OutputArea-output").count() else ""
        if "tokens/s" in status and text and text != old:
            return text
        time.sleep(0.2)
    raise TimeoutError(f"no new story under {selector} within {timeout} s (still {old[:80]!r})")


def _drag_slider(page, description: str, dx: float) -> str:
    """Drag the handle of the slider labelled `description` by dx pixels, as a user does; its new readout."""
    slider = page.locator(".widget-slider", has_text=description)
    handle = slider.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=8)
    page.mouse.up()
    return slider.locator(".widget-readout").inner_text().replace("\u2212", "-")  # the readout's minus sign


def test_story_generator_in_jupyterlab(lab, tmp_path):
    sync_playwright = _requirements()
    base, token, log = lab
    shot = tmp_path / "story_generator.png"
    with sync_playwright() as p, _page(p, tmp_path, log) as page:
        _run_all_cells(page, base, token, NOTEBOOK)
        generate = page.locator("button.jupyter-button", has_text="Generate")
        generate.wait_for(state="visible", timeout=60_000)
        generate.scroll_into_view_if_needed()
        generate.click()
        status = page.locator(".widget-html", has_text="tokens/s")
        status.wait_for(state="visible", timeout=30_000)
        story = page.locator(".tinylib-story .jp-OutputArea-output").last.inner_text()
        no_news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab's "news?" toast
        if no_news.count():
            no_news.first.click()
        # Steering on: the steered story of the same prompt and seed appears beside the plain one.
        page.locator(".widget-dropdown", has_text="steering").locator("select").select_option(
            label="happy - sad (built-in)")
        steered = _wait_for_new_text(page, ".tinylib-steered-story", "")
        before = page.locator(".tinylib-steered-story .widget-html").first.inner_text()
        readout = _drag_slider(page, "strength", -25)  # towards sad
        moved = _wait_for_new_text(page, ".tinylib-steered-story", steered)
        after = page.locator(".tinylib-steered-story .widget-html").first.inner_text()
        unsteered = page.locator(".tinylib-story .jp-OutputArea-output").last.inner_text()
        page.locator(".tinylib-steered-story").scroll_into_view_if_needed()
        page.screenshot(path=str(shot))
    assert story.startswith("Once upon a time"), story
    assert len(story.split()) > len("Once upon a time".split()) + 3, f"no story text appeared: {story!r}"
    assert "steered: happy - sad x +2 after block" in before, before
    assert readout != "+2.0" and f"x {float(readout):+g} after block" in after, (readout, after)
    assert steered.startswith("Once upon a time") and moved != steered and unsteered == story
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACT)
    print(f"screenshot: {ARTIFACT} (also {shot}); strength +2.0 -> {readout}:\n{steered}\n---\n{moved}")


def test_start_here_in_jupyterlab(lab, tmp_path):
    """Notebook 00 runs in the browser: its environment check and run-time table appear on the page."""
    sync_playwright = _requirements()
    base, token, log = lab
    with sync_playwright() as p, _page(p, tmp_path, log) as page:
        _run_all_cells(page, base, token, START)
        for text in ("environment checked ✓", "every notebook is in the table ✓"):
            page.locator(".jp-OutputArea-output", has_text=text).first.wait_for(timeout=60_000)


VIEWS_TEXT = "Once upon a time, there was a little girl named Lily. Lily liked to play with her red ball."
VIEWS_LAYER, VIEWS_HEAD = 1, 2
ALPHA_ATOL = 0.5e-3 + 1 / 255  # the view keeps 3 decimals; Chromium keeps a colour's alpha in 8 bits


def _views_notebook(path: Path) -> None:
    """A notebook that renders the attention view of the reference model and a token view."""
    cells = [nbformat.v4.new_code_cell(
                 "from tinylib.widgets.models import open_model\n"
                 "from tinylib.widgets.token_views import model_attention_view, token_view\n"
                 "found = open_model('reference')\n"
                 f"model_attention_view(found.model, {VIEWS_TEXT!r}, found.tokenizer, layer={VIEWS_LAYER}, "
                 f"head={VIEWS_HEAD})"),
             nbformat.v4.new_code_cell("token_view(['<s>', ' Lily', ' & ', ' Tom'], [0.5, -2.25, 1.0, 3.0], "
                                       "names=['neuron <7>'])")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), path)


def _alphas(page, panel) -> list[float]:
    """The background opacity of every token of one panel, as the browser computed it."""
    colours = panel.locator(".tlv-tok").evaluate_all(
        "spans => spans.map(s => getComputedStyle(s).backgroundColor)")
    out = []
    for c in colours:  # "rgba(40, 80, 220, 0.675)"; an opaque colour is written "rgb(40, 80, 220)"
        parts = c[c.index("(") + 1:-1].split(",")
        out.append(float(parts[3]) if len(parts) == 4 else 1.0)
    return out


def test_attention_view_in_jupyterlab(lab, tmp_path):
    """Hover a token of the attention view in JupyterLab (offline): the shaded targets are the query's row of
    the model's own pattern, they change with the query, per head in the all-heads grid and per layer."""
    sync_playwright = _requirements()
    base, token, log = lab
    notebook = tmp_path / "lab" / "notebooks" / "token_views.ipynb"
    _views_notebook(notebook)
    found = open_model("reference")
    ids = torch.tensor([found.tokenizer.encode(VIEWS_TEXT, bos=True)])
    with torch.no_grad():
        patterns = torch.stack([p[0] for p in found.model.forward_with_patterns(ids)[1]])  # [L, H, T, T]
    row = patterns[VIEWS_LAYER, VIEWS_HEAD]
    # two queries whose strongest targets differ, each clearly ahead of its second (no ties to argue about)
    clear = [q for q in range(3, ids.shape[1]) if float(row[q].topk(2).values.diff().abs()) > 0.05]
    q1 = clear[0]
    q2 = next(q for q in clear if int(row[q].argmax()) != int(row[q1].argmax()))
    with sync_playwright() as p, _page(p, tmp_path, log) as page:
        _run_all_cells(page, base, token, notebook)
        view = page.locator(".tinylib-attention")
        # the kernel imports torch and tinylib first: minutes on a CPU shared with other work
        view.locator(".tlv-panels .tlv-tok").first.wait_for(state="visible", timeout=240_000)
        panel = view.locator(".tlv-panel").first
        assert _alphas(page, panel) == [0.0] * ids.shape[1]  # nothing shaded before a hover
        seen = {}
        for q in (q1, q2):
            panel.locator(".tlv-tok").nth(q).hover()
            seen[q] = _alphas(page, panel)
            readout = view.locator(".tlv-readout").inner_text()
            assert readout.startswith(f"L{VIEWS_LAYER}H{VIEWS_HEAD}: query {q} "), readout
        # all heads: one panel per head, each shading its own row for the hovered query
        view.locator("select.tlv-head").select_option("all")
        panels = view.locator(".tlv-panel")
        panels.first.locator(".tlv-tok").nth(q1).hover()
        per_head = [_alphas(page, panels.nth(h)) for h in range(panels.count())]
        thumbnails = view.locator(".tlv-panel canvas").count()
        # another layer: the same query now shades that layer's rows
        view.locator("select.tlv-layer").select_option(str(VIEWS_LAYER - 1))
        panels.first.locator(".tlv-tok").nth(q1).hover()
        layer_before = _alphas(page, panels.nth(VIEWS_HEAD))
        tokens = page.locator(".tinylib-tokens")
        tokens.locator(".tlv-tok").nth(1).hover()
        token_readout = tokens.locator(".tlv-readout").inner_text()
        page.screenshot(path=str(tmp_path / "attention_view.png"))
    for q in (q1, q2):
        assert max(range(len(seen[q])), key=seen[q].__getitem__) == int(row[q].argmax()), (q, seen[q])
        torch.testing.assert_close(torch.tensor(seen[q]), row[q], atol=ALPHA_ATOL, rtol=0)
    assert seen[q1] != seen[q2]
    _assert_rows(per_head, patterns[VIEWS_LAYER, :, q1])
    assert thumbnails == patterns.shape[1]
    _assert_rows([layer_before], patterns[VIEWS_LAYER - 1, VIEWS_HEAD, q1][None])
    assert token_readout == 'neuron <7> at token 1 " Lily": -2.25', token_readout
    print(f"queries {q1} and {q2}: targets {int(row[q1].argmax())} and {int(row[q2].argmax())}; "
          f"screenshot {tmp_path / 'attention_view.png'}")


def _assert_rows(shown: list[list[float]], rows: torch.Tensor) -> None:
    """Each panel's opacities are its head's attention row (within ALPHA_ATOL), argmax included."""
    assert len(shown) == rows.shape[0], (len(shown), rows.shape)
    torch.testing.assert_close(torch.tensor(shown), rows.float(), atol=ALPHA_ATOL, rtol=0)
    for panel, row in zip(shown, rows):
        assert row[max(range(len(panel)), key=panel.__getitem__)] >= row.max() - ALPHA_ATOL
