"""The quickstart's live explorer in a real browser: JupyterLab driven by headless Chromium through Selenium.

Headless test and figure runs build no live widgets (`TPX_STATIC_WIDGETS=1`), so this is the test that the
explorers work where people use them. It starts JupyterLab on a copy of `notebooks/00_quickstart.ipynb` (so
neither the notebook nor the committed figure changes), runs every cell with live widgets, drags the retention
slider, and checks that the kept-token count and the figure follow it.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them with apt; other paths through
`TPX_CHROMIUM` / `TPX_CHROMEDRIVER`). Without them the test is skipped with the reason, except under CI
(`CI=true`), where it fails.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("TPX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("TPX_CHROMEDRIVER") or shutil.which("chromedriver")
KEPT = re.compile(r"kept (\d+) of (\d+) visual tokens")
TIMEOUT = 300  # seconds for JupyterLab, the kernel and the notebook on a slow shared machine


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not CHROMIUM or not CHROMEDRIVER:
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return None


def _require_browser() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run under CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a copy of the quickstart, live widgets on; yields (url, token), then stops it."""
    _require_browser()
    work = tmp_path_factory.mktemp("lab")
    (work / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "00_quickstart.ipynb", work / "notebooks")
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "TPX_STATIC_WIDGETS"}  # live widgets, as in a real lab
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", JUPYTER_RUNTIME_DIR=str(work / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(work / "settings"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--notebook-dir={work / 'notebooks'}",
           "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=False"]
    log = open(work / "lab.log", "w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while f"127.0.0.1:{port}/" not in (work / "lab.log").read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{(work / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", token, work
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def _explorer_state(driver) -> tuple[int, int, str] | None:
    """(kept, of, image source) of the explorer's output, or None while it has not drawn (or is redrawing: an
    element replaced while it is read is stale, and the caller polls again)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        outputs = driver.find_elements("css selector", ".widget-vbox .jp-OutputArea-output, .widget-vbox .widget-output")
        text = " ".join(o.text for o in outputs)
        images = [img.get_attribute("src") for o in outputs for img in o.find_elements("tag name", "img")]
    except StaleElementReferenceException:
        return None
    found = KEPT.search(text)
    if not found or not images:
        return None
    return int(found.group(1)), int(found.group(2)), images[-1]


def _wait(predicate, what: str, driver, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    errors = [e.text[:2000] for e in driver.find_elements("css selector", "[data-mime-type='application/vnd.jupyter.stderr']")]
    pytest.fail(f"timed out waiting for {what}; notebook stderr: {errors}")


def test_quickstart_explorer_follows_the_retention_slider(lab, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    from tpx.select import budget

    url, token, work = lab
    browser.get(f"{url}/lab/tree/00_quickstart.ipynb?token={token}&reset")
    _wait(lambda: browser.execute_script(
        "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle');"), "the notebook's kernel", browser)
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")

    first = _wait(lambda: _explorer_state(browser), "the explorer's first drawing", browser)
    kept, n_visual, image = first
    assert n_visual == 144  # the organism's 12 x 12 grid
    assert kept == budget(0.25, n_visual)  # the notebook's retention
    assert (work / "figures" / "00_quickstart.png").is_file()  # written beside the copy, not into the repo

    slider = next(s for s in browser.find_elements("css selector", ".widget-hslider, .widget-slider")
                  if "retention" in s.text)
    handle = slider.find_element("css selector", ".noUi-handle")
    ActionChains(browser).drag_and_drop_by_offset(handle, 60, 0).perform()  # a user's drag to the right

    def moved():
        state = _explorer_state(browser)
        return state if state and state[0] != kept else None

    new_kept, new_n, new_image = _wait(moved, "the explorer to redraw after the slider moved", browser)
    readout = float(slider.find_element("css selector", ".widget-readout").text)
    assert readout > 0.25
    assert new_n == n_visual
    assert new_kept == budget(readout, n_visual)  # the count follows the slider's value exactly
    assert new_image != image  # and the figure was redrawn
