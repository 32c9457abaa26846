"""`stagetune ui` in a real browser: headless Chromium reviews a study in MLflow's UI.

A real tiny search (two trials through the CLI, FAST settings) fills the store; `stagetune ui`
serves it as a subprocess on a free loopback port; Selenium drives Debian's ``chromium`` with
``chromedriver``. The experiment opens on its runs table (a model-training experiment); under the
study's parent run every child is named by its schedule label; the summary metrics can be shown
as columns; the chart view draws eval loss of every child against the compute step. Two
screenshots stay in the test's temp directory (their paths are printed).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from stagetune.cli import main
from stagetune.results.ui import free_port
from tests.conftest import FAST

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STUDY = "ui-browser"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHOWN_METRICS = ("outcome/final_eval_loss", "outcome/delta_loss_equal_compute", "outcome/speedup")
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1600,1000",
)


def _require_chromium() -> None:
    missing = [
        p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))
    ]
    if missing:
        pytest.skip(
            f"headless Chromium is not installed ({', '.join(missing)} missing): "
            "apt-get install -y chromium chromium-driver (.ci/run does it)"
        )


@pytest.fixture
def study(ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """A real tiny search: the baseline and one sampled schedule, logged to SQLite MLflow."""
    _require_chromium()
    workdir = tmp_path / "work"
    args = ["run", "--workdir", str(workdir), "--json", "--quiet", "--trials", "2",
            "--space", "compact", "--set", f"name={STUDY}",
            "--set", "search.early_stopping=false"]  # fmt: skip
    for o in FAST:
        args += ["--set", o]
    assert main(args) == 0
    capsys.readouterr()
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("stagetune.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("stagetune.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0].info.run_id
    assert all(r.data.tags.get("mlflow.parentRunId") == parent for r in children)
    base = next(r for r in children if r.data.tags.get("stagetune.is_baseline") == "true")
    return {
        "baseline_mflops": base.data.metrics["flops"] / 1e6,
        "workdir": workdir,
        "experiment_id": exp.experiment_id,
        "parent": parent,
        "children": {r.info.run_id: r.info.run_name for r in children},
    }


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from /proc: the server runs in its own session)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [p for p, pp in parents.items() if pp == cur]
        out += kids
        todo += kids
    return out


def _alive_with(pid: int, marker: str) -> bool:
    """``pid`` still runs a command line containing ``marker`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return marker in cmdline and state != "Z"


def _stop(proc: subprocess.Popen[bytes], spawned: list[int], port: int) -> list[int]:
    """Ctrl-C `stagetune ui` (it stops its server); kill and return what it left running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive_with(p, str(port)) for p in spawned):
        time.sleep(0.3)
    leaked = [p for p in spawned if _alive_with(p, str(port))]
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leaked


@pytest.fixture
def ui(study: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`stagetune ui --workdir W --port P` as a subprocess, until it prints its URL."""
    port = free_port()
    log_path = tmp_path / "ui.out"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stagetune.cli", "ui", "--workdir", str(study["workdir"]),
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        # A shell's background job ignores SIGINT and children inherit that; Ctrl-C must work.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    log.close()
    spawned: list[int] = []
    try:
        deadline = time.monotonic() + 120
        url = None
        while time.monotonic() < deadline and url is None:
            assert proc.poll() is None, f"stagetune ui exited: {log_path.read_text()}"
            m = re.search(r"MLflow UI: (http://\S+)", log_path.read_text(errors="replace"))
            url = m.group(1) if m else None
            time.sleep(0.3)
        assert url == f"http://127.0.0.1:{port}", log_path.read_text()
        spawned = _descendants(proc.pid)
        yield {**study, "url": url, "port": port, "pid": proc.pid}
    finally:
        leaked = _stop(proc, spawned or _descendants(proc.pid), port)
    assert not leaked, f"Ctrl-C on `stagetune ui` left its server running (pids {leaked})"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (Linux /proc/net/tcp{,6})."""
    out: set[str] = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                local, state = cols[1], cols[3]
                addr_hex, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(addr_hex)
                # /proc prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if width == 4 else socket.AF_INET6
                out.add(socket.inet_ntop(family, raw))
    return out


def _non_loopback_ipv4() -> set[str]:
    """This machine's IPv4 addresses other than loopback (best effort, no traffic sent)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # a UDP "connect" only picks the route's source address
        found.add(s.getsockname()[0])
    return {ip for ip in found if not ip.startswith("127.") and ip != "0.0.0.0"}


def _chrome(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _show_columns(driver: Any, metrics: tuple[str, ...]) -> None:
    """Tick metrics in the runs table's "Columns" menu (found by its search box)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "button")
                  if b.text.strip() == "Columns")  # fmt: skip
    button.click()
    for name in metrics:
        box = driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(name)
        time.sleep(0.5)
        driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{name}']")[-1].click()
        time.sleep(0.5)
    driver.find_element(By.XPATH, "//*[normalize-space(text())='Training runs']").click()
    time.sleep(1)


def _column_ids(driver: Any) -> set[str]:
    """Every column of the runs table: the grid draws only those in view, so it is scrolled
    across."""
    from selenium.webdriver.common.by import By

    found: set[str] = set()
    for step in range(12):
        found |= {
            e.get_attribute("col-id")
            for e in driver.find_elements(By.CSS_SELECTOR, "[role=columnheader][col-id]")
        }
        driver.execute_script(
            "document.querySelectorAll('.ag-body-horizontal-scroll-viewport, "
            ".ag-center-cols-viewport').forEach(v => v.scrollLeft = arguments[0]);",
            step * 300,
        )
        time.sleep(0.3)
    return found


def test_ui_lists_the_studys_child_runs(ui: dict[str, Any], tmp_path: Path) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # Loopback only: every listening socket on the port is bound to 127.0.0.1 ...
    assert _listening_addresses(ui["port"]) == {"127.0.0.1"}
    # ... so the machine's other addresses refuse the connection.
    for ip in _non_loopback_ipv4():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            assert s.connect_ex((ip, ui["port"])) != 0, f"the UI answers on {ip}"

    shot = tmp_path / "mlflow-ui-runs.png"
    chart_shot = tmp_path / "mlflow-ui-loss-vs-compute.png"
    print(f"MLflow UI screenshots: {shot} and {chart_shot}")
    driver = _chrome(tmp_path / "chromium-profile")
    try:
        # No view parameter: a model-training experiment opens on its runs table (MLflow 3
        # opened GenAI traces for an experiment of no type).
        driver.get(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs")
        wait = WebDriverWait(driver, 90, poll_frequency=0.5)
        parent_row = f"[role=row][row-id='{ui['parent']}']"
        name_cell = "[role=gridcell][col-id='attributes.`Run Name`']"
        try:
            expand = wait.until(
                ec.element_to_be_clickable((By.CSS_SELECTOR, f"{parent_row} {name_cell} button"))
            )
        except TimeoutException:
            driver.save_screenshot(str(shot))
            pytest.fail(f"the study's parent run never showed in the runs table (see {shot})")
        # Child runs sit folded under the study's parent run: unfold them.
        expand.click()

        def children_shown(d: Any) -> bool:
            ids = {
                e.get_attribute("row-id")
                for e in d.find_elements(By.CSS_SELECTOR, "[role=row][row-id]")
            }
            return set(ui["children"]) <= ids

        try:
            wait.until(children_shown)
        except TimeoutException:
            driver.save_screenshot(str(shot))
            pytest.fail(f"child runs not listed under the parent after expanding (see {shot})")
        # Each child is a link to its run page, named by its schedule label.
        links = {
            a.get_attribute("href").rsplit("/", 1)[-1]: a.text
            for a in driver.find_elements(By.CSS_SELECTOR, f"{name_cell} a[href*='/runs/']")
        }
        for run_id, name in ui["children"].items():
            assert links.get(run_id) == name, (run_id, name, links)
        assert "baseline" in ui["children"].values()
        page = driver.find_element(By.TAG_NAME, "body").text
        assert STUDY in page
        # The summary metrics become columns of the runs table (it sorts by them).
        _show_columns(driver, SHOWN_METRICS)
        columns = _column_ids(driver)
        assert driver.save_screenshot(str(shot))
        assert {f"metrics.`{m}`" for m in SHOWN_METRICS} <= columns, sorted(columns)

        # The chart view: eval loss of every child against the compute step (MFLOPs).
        driver.get(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs?compareRunsMode=CHART")
        try:
            unfold = wait.until(
                ec.element_to_be_clickable((By.CSS_SELECTOR, f"[row-id='{ui['parent']}'] button"))
            )
        except TimeoutException:
            driver.save_screenshot(str(chart_shot))
            pytest.fail(f"the parent run is not in the chart view's list (see {chart_shot})")
        time.sleep(1)
        if not children_shown(driver):  # the table view's unfolding may carry over
            unfold.click()
        wait.until(children_shown)
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
        )
        search = driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']")
        search.send_keys("eval_loss")

        def loss_traces(d: Any) -> list[list[float]]:
            return d.execute_script(  # type: ignore[no-any-return]
                "const cards = Array.from(document.querySelectorAll("
                "'[data-testid=experiment-view-compare-runs-card]'));"
                "const card = cards.find(c => c.innerText.trim().startsWith('eval_loss'));"
                "const plot = card && card.querySelector('.js-plotly-plot');"
                "return plot ? (plot.data || []).map(t => Array.from(t.x || [])) : [];"
            )

        try:
            wait.until(lambda d: len([x for x in loss_traces(d) if len(x) >= 2]) >= 2)
        except TimeoutException:
            driver.save_screenshot(str(chart_shot))
            pytest.fail(f"no eval_loss chart of every child (see {chart_shot})")
        time.sleep(1)  # let the traces draw before the screenshot
        assert driver.save_screenshot(str(chart_shot))
        # The x axis is the step: compute in MFLOPs, the same for every trial.
        xs = [x for trace in loss_traces(driver) for x in trace]
        assert max(xs) == pytest.approx(ui["baseline_mflops"], rel=0.05), (max(xs), ui)
    finally:
        driver.quit()
    for png in (shot, chart_shot):
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
