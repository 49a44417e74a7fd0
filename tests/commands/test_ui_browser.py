"""``medcl ui`` in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium
opens a trained run and shows its ``val/dice_mean`` and the validation overlay images.

The browser is never downloaded: Selenium gets ``/usr/bin/chromedriver`` and ``/usr/bin/chromium``. Without
them the test is skipped, unless ``MEDCL_REQUIRE_BROWSER`` is set (``.ci/run`` sets it after installing
them), in which case it fails. The screenshot goes to ``$MEDCL_TEST_ARTIFACTS`` (default ``tmp/artifacts``
in the repository) and its path is printed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = (
    pytest.mark.slow
)  # a real browser against the MLflow UI: `make test` runs it, `make test-fast` does not

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1200",
)


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        message = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("MEDCL_REQUIRE_BROWSER"):
            pytest.fail(message + "; MEDCL_REQUIRE_BROWSER is set")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(pid: int, port: int) -> set[str]:
    """IP addresses the process tree of ``pid`` listens on at ``port``."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for proc in [root, *root.children(recursive=True)]:
        try:
            # psutil >= 6 names it net_connections; 5.x only has connections.
            list_connections = getattr(proc, "net_connections", None) or proc.connections
            conns = list_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    return found


def _wait_for_http(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"medcl ui exited with {proc.returncode}") from None
            time.sleep(0.5)
    raise AssertionError(f"medcl ui did not answer at {url} within {seconds:.0f} s")


def test_ui_shows_the_trained_run_in_chromium(trained_run) -> None:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    result, out, _ = trained_run
    import mlflow

    experiment_id = (
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
        .get_run(result.run_id)
        .info.experiment_id
    )
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(  # no --host: the default must be loopback
        [sys.executable, "-m", "medcl.cli", "ui", "--runs", str(out), "--port", str(port)],
        cwd=tempfile.gettempdir(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    driver = None
    try:
        base = f"http://127.0.0.1:{port}"
        lines = [proc.stdout.readline()]
        assert lines[0].startswith("starting the MLflow UI"), lines  # a progress line while it starts
        while not lines[-1].startswith("MLflow UI for"):  # the URL, printed once the server answers
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)  # end of output: medcl ui exited
        assert base in lines[-1], lines[-1]
        _wait_for_http(f"{base}/health", proc)
        assert _listening_addresses(proc.pid, port) == {"127.0.0.1"}

        options = Options()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='medcl-chromium-')}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        wait = WebDriverWait(driver, 60, poll_frequency=0.5)

        # Overview tab: the metrics table lists val/dice_mean with its value.
        driver.get(f"{base}/#/experiments/{experiment_id}/runs/{result.run_id}")
        wait.until(lambda d: "val/dice_mean" in d.find_element(By.TAG_NAME, "body").text)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "golden" in body  # the run name
        assert f"{result.best_dice:.4f}"[:5] in body  # its logged value (the UI shows full precision)

        # Model metrics tab: the overlays logged with log_image are drawn as images from the run's artifacts.
        driver.get(f"{base}/#/experiments/{experiment_id}/runs/{result.run_id}/model-metrics")

        def loaded_overlay(d):
            for img in d.find_elements(By.TAG_NAME, "img"):
                src = img.get_attribute("src") or ""
                if "get-artifact" in src and "overlay_0" in src:
                    ready = d.execute_script(
                        "return arguments[0].complete && arguments[0].naturalWidth > 0", img
                    )
                    return img if ready else False
            return False

        image = wait.until(loaded_overlay)
        assert "val/overlay_0" in driver.find_element(By.TAG_NAME, "body").text
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)

        artifacts = Path(os.environ.get("MEDCL_TEST_ARTIFACTS", ROOT / "tmp" / "artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / "ui_run_overlay.png"
        assert driver.save_screenshot(str(shot))
        print(f"screenshot of the MLflow UI: {shot}")
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
