"""`report.md` of the default run shows the table, the verdict and the plots.

`stagetune run` with the default preset (FAST settings, four trials, ASHA on), then the report
it wrote: the outcome table, a verdict sentence, image links to PNGs that exist, and report.html
with the three interactive plotly figures inline.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stagetune.cli import main
from stagetune.orchestration.library_logs import LIBRARY_LOG
from stagetune.results.plots import PLOT_NAMES
from stagetune.results.render import TABLE_COLUMNS
from stagetune.trainables.session import TRIAL_HISTORY_DIR
from tests.conftest import FAST

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_default_run_report(
    ray_local: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "work"
    args = ["run", "--workdir", str(workdir), "--trials", "4", "--quiet"]
    for o in FAST:
        args += ["--set", o]
    assert main(args) == 0
    out, err = capfd.readouterr()
    report_dir = workdir / "report"
    # Library start-up chatter is in the work directory's log, not on the terminal.
    log = (workdir / LIBRARY_LOG).read_text()
    for noise in ("Creating initial MLflow database tables", "A new study created"):
        assert noise in log and noise not in err, noise
    assert f"report: {report_dir / 'report.md'}" in out

    md = (report_dir / "report.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", md, flags=re.M)
    assert [s.split("\n", 1)[0] for s in sections[1:]] == [
        "Verdict", "Outcomes at equal compute", "Plots"
    ]  # fmt: skip

    # The table: its header, the reference's row in bold, one row per schedule.
    assert "| " + " | ".join(TABLE_COLUMNS) + " |" in md
    table = [ln for ln in sections[2].splitlines() if ln.startswith("|")]
    assert table[2].startswith("| **")
    data = json.loads((report_dir / "report.json").read_text())
    assert len(table) == 2 + len(data["outcomes"]) >= 3

    # The verdict: the best schedule against the reference, which one seed cannot confirm,
    # and the study's regime.
    verdict = data["verdict"]
    assert verdict in out and verdict in sections[1]
    assert re.match(
        r"Against the reference \(.+\), over 1 seed: schedule .+ "
        r"(reached|did not reach) the reference's eval loss",
        verdict,
    ), verdict
    assert "One seed gives no interval, so no gain can be claimed" in verdict
    assert "Regime: the reference has" in verdict and data["regime"]["tokens_per_param"] > 0
    assert re.search(r"^Reference( \(.+\))?: final eval loss [\d.]+ over 1 seed\(s\)",
                     sections[1], re.M)  # fmt: skip

    # The answer as models: the reference's (and the best schedule's, when a run of it trained
    # to its end) trained model, loaded by transformers with its tokenizer.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = dict(re.findall(r"^(reference|best) model: (\S+) ", out, re.M))
    assert "reference" in exported and set(exported) <= {"reference", "best"}
    for role, where in exported.items():
        assert Path(where) == workdir / "models" / role
        tok = AutoTokenizer.from_pretrained(where)
        ids = tok("def add(a, b):\n    return a + b\n")["input_ids"]
        assert len(ids) > 3 and tok.decode(ids) == "def add(a, b):\n    return a + b\n"
        model = AutoModelForCausalLM.from_pretrained(where)
        assert model(torch.tensor([ids])).logits.shape == (1, len(ids), model.config.vocab_size)

    # The plots: every image link resolves to a PNG beside the report.
    links = re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", sections[3])
    assert [Path(p).stem for _, p in links] == list(PLOT_NAMES)
    for _, rel in links:
        png = report_dir / rel
        assert png.is_file() and png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000

    # report.html: the table, the verdict and the three figures, interactive and inline.
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert "<table>" in page and "<th>Compute to baseline loss</th>" in page
    assert page.count("Plotly.newPlot") == len(PLOT_NAMES)
    assert 'src="https://cdn.plot.ly' not in page and "<script src=" not in page
    assert len(page) > 1_000_000  # plotly.js itself is embedded
    # plotly.js once per report (in report.html): the folder stays small (it was 19 MB).
    for name in PLOT_NAMES:
        assert not (report_dir / "plots" / f"{name}.html").exists()
    size = sum(p.stat().st_size for p in report_dir.rglob("*") if p.is_file())
    print(f"report folder: {size / 1e6:.1f} MB")
    assert size <= 6_000_000, size
    # Checkpoint retention: a finished trial keeps only Tune's newest checkpoints.
    results = workdir / "ray_results"
    print(f"ray_results: {sum(p.stat().st_size for p in results.rglob('*')) / 1e6:.1f} MB")
    assert not list(results.rglob(TRIAL_HISTORY_DIR))

    # The terminal: the table fits 120 columns, compute in SI units, a legend of the labels.
    table = out[: out.index(verdict)]
    assert max(len(line) for line in table.splitlines()) <= 120, table
    assert "FLOPs" in table and "e+" not in table and "Labels: S<stages>" in table
