"""``stagetune sweep`` on the smoke scale, for real: local Ray, Optuna RDB storage, MLflow on
SQLite (sweep run → study parent runs → trials), the regime report, and a resume after the
driver (with its local Ray) was killed by SIGKILL in the middle of the second study."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.faults.conftest import Cli, kill_group

pytestmark = pytest.mark.slow

NAME = "stagetune-smoke"
LENGTHS = ("0.05", "0.1")
STUDIES = [f"{NAME}-L4d32-tpp{x}" for x in LENGTHS]
POINTS = 3  # paper S=2, S=4, G_stack (the baseline apart; lr × 2 is the reference sweep)
LRS = 2  # each schedule at lr × 1 and × 2, the reference's own tuning


@pytest.fixture
def cli(token_cache: Path, tmp_path: Path) -> Iterator[Cli]:
    c = Cli(token_cache, tmp_path / "logs")
    yield c
    c.cleanup()


def _wait_second_study(proc, work: Path, cli: Cli, timeout: float = 400) -> None:  # type: ignore[no-untyped-def]
    # Tune's experiment directory: the second study's trials are being started.
    second = work / "studies" / STUDIES[1] / "ray_results" / STUDIES[1]
    marker = work / "studies" / STUDIES[1] / "study.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = cli.output("first")
            pytest.fail(
                f"the sweep ended (rc {proc.returncode}) before the kill:\n{out[-2000:]}\n{err[-3000:]}"
            )
        if marker.is_file() and second.exists():
            time.sleep(3)  # into the second study's trials
            return
        time.sleep(0.5)
    pytest.fail("the second study never started")


def test_sweep_smoke_nested_in_mlflow_and_resumed_after_kill(cli: Cli, tmp_path: Path) -> None:
    work = tmp_path / "sweep"
    args = [
        "sweep",
        "--preset",
        "smoke",
        "--workdir",
        str(work),
        "--tokens-per-param",
        ",".join(LENGTHS),
        "--seeds",
        "2",
        "--reference-lrs",
        "2",
        "--target-params",
        "1e6",
        "--target-tokens",
        "2e7",
        "--quiet",
    ]
    proc = cli.start(args, name="first")
    _wait_second_study(proc, work, cli)
    kill_group(proc)
    state = json.loads((work / "sweep.json").read_text())
    assert state["done"] == STUDIES[:1]

    rc = cli.run(
        ["sweep", "--resume", "--workdir", str(work), "--json"], name="resume", timeout=600
    )
    out, err = cli.output("resume")
    assert rc == 0, err[-3000:]
    report = json.loads(out)
    (size,) = report["sizes"]
    assert [round(s["tokens_per_param"], 2) for s in size["studies"]] == [0.05, 0.1]
    for s in size["studies"]:
        assert len(s["seeds"]) == 2 and s["schedule"] is not None
    assert "crossover" in size["compute_fraction"] and size["target"]["tokens_per_param"] == 20
    assert "EXTRAPOLATED" in size["target"]["fraction"]
    for name in ("sweep_report.md", "sweep_report.html", "sweep_report.json", "regime_curve.png"):
        assert (work / "report" / name).stat().st_size > 0

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags.get("stagetune.role", ""), []).append(r)
    (sweep,) = by_role["sweep"]
    assert sweep.info.status == "FINISHED" and sweep.data.metrics
    arts = {a.path for a in client.list_artifacts(sweep.info.run_id, "sweep_report")}
    assert "sweep_report/regime_curve.png" in arts
    parents = {r.data.tags["stagetune.study"]: r for r in by_role["parent"]}
    assert sorted(parents) == STUDIES
    assert {p.data.tags["mlflow.parentRunId"] for p in parents.values()} == {sweep.info.run_id}
    parent_ids = {p.info.run_id for p in parents.values()}
    finished = [r for r in by_role["trial"] if r.data.tags.get("stagetune.status") == "finished"]
    assert all(r.data.tags["mlflow.parentRunId"] in parent_ids for r in by_role["trial"])
    # every schedule on both seeds in both studies, nothing lost to the kill
    for study in STUDIES:
        done = [r for r in finished if r.data.tags["stagetune.study"] == study]
        assert len(done) >= 2 * (POINTS + 1), study
        st = optuna.load_study(
            study_name=study, storage=f"sqlite:///{work / 'studies' / study / 'optuna.db'}"
        )
        assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in st.trials) == (
            LRS * POINTS + 1
        )
