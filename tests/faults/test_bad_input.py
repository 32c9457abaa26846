"""Fault: malformed input, through the real CLI (``main()`` in process, streams captured).

Each case must exit 2 with exactly one line on stderr naming the field, the value and the fix,
no traceback, and create nothing: no work directory, no MLflow store, no report. These cover
the YAML side and the ``run`` / ``train`` / ``report`` / ``ui`` flags; the ``--set`` cases of
``tests/test_cli_errors.py`` are not repeated.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from stagetune.cli import main
from tests.conftest import FAST
from tests.faults.conftest import fast_args


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Path], list[str]]
    """argv, given the case's scratch directory (which holds the files written below)."""
    needles: tuple[str, ...]
    """Field (as ``field=``), then words of the fix, that the one line must contain."""
    files: dict[str, str | bytes] | None = None
    """Files to write into the scratch directory first (name -> content)."""


def _yaml(id: str, text: str, *needles: str, command: str = "run") -> Case:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    # The shared FAST settings (so cases that reach the data use the cached tokenizer), but
    # never over a key the YAML sets: --set is applied after the file.
    fast = []
    for o in FAST if isinstance(data, dict) else []:
        section, field = o.split("=")[0].split(".")
        held = data.get(section, {})
        if isinstance(held, dict) and field not in held:
            fast.append(o)
    return Case(
        id=f"yaml-{id}",
        argv=lambda d: [command, "--config", str(d / "c.yaml"), "--workdir", str(d / "work"),
                        *[a for o in fast for a in ("--set", o)]],
        needles=needles,
        files={"c.yaml": text},
    )


def _run(id: str, *args: str, needles: tuple[str, ...], files: dict[str, str | bytes] | None = None,
         command: str = "run", sets: tuple[str, ...] = ()) -> Case:  # fmt: skip
    """A case of ``command`` with ``args``; ``sets`` are --set overrides laid over FAST's."""

    def argv(d: Path) -> list[str]:
        return [command, *(a.replace("{d}", str(d)) for a in args), "--workdir", str(d / "work"),
                *fast_args(*sets)]  # fmt: skip

    return Case(id=f"{command}-{id}", argv=argv, needles=needles, files=files)


def _bad_everywhere(id: str, *overrides: str, needles: tuple[str, ...]) -> list[Case]:
    """The same bad ``--set`` s for every command that reads a config: invalid in all of them."""
    return [_run(id, command=c, needles=needles, sets=overrides)
            for c in ("run", "train", "estimate")]  # fmt: skip


def _words(n: int) -> str:
    rng = random.Random(0)
    return " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=3)) for _ in range(n))


_BINARY = b"some text " * 20 + random.Random(1).randbytes(4000)
_HUGE = "x" * 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workdir(id: str, workdir: str, *args: str, needles: tuple[str, ...],
             files: dict[str, str | bytes] | None = None) -> Case:  # fmt: skip
    """``run --workdir WORKDIR`` (``{d}``: the scratch directory) with the FAST settings."""

    def argv(d: Path) -> list[str]:
        return ["run", "--workdir", workdir.replace("{d}", str(d)),
                *(a.replace("{d}", str(d)) for a in args), *fast_args()]  # fmt: skip

    return Case(id=f"workdir-{id}", argv=argv, needles=needles, files=files)


_POINT = "search.points_to_evaluate=[{num_stages: 1, lr: %s, warmup_steps: %d}]"


CASES: list[Case] = [
    # -- the YAML file itself
    _yaml("syntax", "model: {n_layer: 4\n", "config=", "not valid YAML at line 2"),
    _yaml("top-level-list", "- a\n- b\n", "config=", "mapping at top level"),
    Case("yaml-binary", lambda d: ["run", "--config", str(d / "c.yaml"), "--workdir",
                                   str(d / "work")],
         ("config=", "not a UTF-8 text file"), {"c.yaml": b"\xff\xfe\x00\x01binary"}),
    Case("yaml-is-a-directory", lambda d: ["run", "--config", str(d), "--workdir", str(d / "work")],
         ("config=", "pass a YAML file path")),
    # -- keys
    _yaml("unknown-section", "modle: {n_layer: 4}\n", "modle=", "did you mean 'model'"),
    _yaml("unknown-key", "train: {lr_shedule: cosine}\n", "train.lr_shedule=",
          "did you mean 'lr_schedule'"),
    _yaml("section-not-mapping", "model: 4\n", "model=4", "expected a mapping of fields"),
    # -- types
    _yaml("int-as-word", "model: {n_layer: four}\n", "model.n_layer='four'", "expected an integer"),
    _yaml("int-as-bool", "train: {batch_size: true}\n", "train.batch_size=True",
          "expected an integer"),
    _yaml("int-as-fraction", "model: {n_layer: 2.5}\n", "model.n_layer=2.5", "expected an integer"),
    _yaml("float-as-list", "train: {lr: [1, 2]}\n", "train.lr=[1, 2]", "expected a number"),
    _yaml("float-infinite", "train: {lr: .inf}\n", "train.lr=inf", "expected a finite number"),
    _yaml("float-nan", "budget: {factor: .nan}\n", "budget.factor=nan", "expected a finite number"),
    _yaml("list-as-int", "schedule: {increments: 4}\n", "schedule.increments=4", "expected a list"),
    _yaml("list-item", "schedule: {increments: [2, x]}\n", "schedule.increments[1]='x'",
          "expected an integer"),
    # -- ranges and consistency
    _yaml("increments-sum", "schedule: {increments: [1, 1, 1]}\n", "schedule.increments=[1, 1, 1]",
          "increments sum to 3 but model.n_layer=4"),
    _yaml("too-many-stages", "schedule: {num_stages: 9}\n", "schedule.num_stages=9",
          "at most model.n_layer=4"),
    _yaml("phase1-fraction", "schedule: {phase1_fraction: 1.0}\n",
          "schedule.phase1_fraction=1.0", "[0, 1)"),
    _yaml("eval-fraction", "data: {eval_fraction: 0.7}\n", "data.eval_fraction=0.7", "(0, 0.5)"),
    _yaml("vocab-too-big", "data: {vocab_size: 70000}\n", "data.vocab_size=70000", "uint16"),
    _yaml("grad-accum", "train: {grad_accum: 3}\n", "train.grad_accum=3", "must divide"),
    _yaml("model-vocab-below-tokenizer", "model: {vocab_size: 100}\n", "model.vocab_size=100",
          "the tokenizer has 512 tokens"),
    # -- names and choices
    _yaml("name-with-slash", "name: a/b\n", "name='a/b'", "no path separators"),
    _yaml("experiment-dotdot", "tracking: {experiment: ..}\n", "tracking.experiment='..'",
          "no path separators"),
    _yaml("family-typo", "model: {family: llamma}\n", "model.family='llamma'",
          "did you mean 'llama'"),
    _yaml("strategy", "resources: {strategy: zero}\n", "resources.strategy='zero'", "ddp, fsdp"),
    _yaml("cpus-zero", "resources: {cpus_per_worker: 0}\n", "resources.cpus_per_worker=0",
          "use > 0"),
    _yaml("sampler", "search: {sampler: cmaes}\n", "search.sampler='cmaes'", "tpe"),
    _yaml("trials-zero", "search: {num_trials: 0}\n", "search.num_trials=0", "use >= 1"),
    _yaml("convention", "budget: {convention: flops}\n", "budget.convention='flops'", "paper"),
    # -- data
    _yaml("source-not-a-data-file", "data: {source: /dev/null}\n", "data.source='/dev/null'",
          "unsupported file type"),
    _run("empty-txt", "--set", "data.source={d}/empty.txt", files={"empty.txt": ""},
         needles=("data.source=", "empty.txt", "yields no text")),
    _run("no-data-files", "--set", "data.source={d}", files={"x.csv": "a,b\n"},
         needles=("data.source=", "holds no .txt, .jsonl")),
    _run("jsonl-not-json", "--set", "data.source={d}/bad.jsonl", files={"bad.jsonl": "oops\n"},
         needles=("data.source=", "not valid JSON")),
    _run("jsonl-field", "--set", "data.source={d}/t.jsonl", files={"t.jsonl": '{"txt": "hi"}\n'},
         needles=("data.text_field='text'", "has no 'text' key")),
    _run("tokenizer-missing", "--set", "data.tokenizer={d}/tok.json",
         needles=("data.tokenizer=", "does not exist")),
    _run("tokenizer-garbage", "--set", "data.tokenizer={d}/tok.json", files={"tok.json": "{"},
         needles=("data.tokenizer=", "not a valid tokenizer.json")),
    # -- run flags
    _run("workers-zero", "--workers-per-trial", "0", needles=("--workers-per-trial=0", "positive")),
    _run("seeds-zero", "--seeds", "0", needles=("--seeds=0", "positive")),
    _run("address-syntax", "--address", "nonsense", needles=("--address='nonsense'", "host:port")),
    _run("address-dead", "--address", f"127.0.0.1:{_free_port()}",
         needles=("--address=", "cannot reach a Ray head")),
    _run("override-not-a-section", "--set", "train.lr.x=1", needles=("train.lr=", "a number")),
    _run("override-torn-list", "--set", "schedule.increments=[2,2",
         needles=("schedule.increments='[2,2'", "expected a list")),
    _run("override-empty-source", "--set", "data.source=", needles=("data.source=''", "builtin")),
    # -- the work directory: a directory of its own, holding no other files
    _workdir("root", "/", needles=("workdir='/'", "/ is the root directory", "one of its own")),
    _workdir("top-level", "/usr", needles=("workdir='/usr'", "a top-level system directory")),
    _workdir("top-level-empty", "/mnt", needles=("workdir='/mnt'", "a top-level system directory")),
    _workdir("not-empty", "{d}", files={"notes.txt": "x", "data": "y"},
             needles=("workdir=", "not empty (data, notes.txt) and holds no study",
                      "choose an empty or new --workdir")),
    # -- the tracking store, probed before Ray starts
    _workdir("tracking-garbage", "{d}/work", "--tracking-uri", "garbage",
             needles=("tracking.tracking_uri='garbage'", "file store, which MLflow 3 refuses",
                      "sqlite:///")),
    _workdir("tracking-file-uri", "{d}/work", "--tracking-uri", "file:///nonexistent/x",
             needles=("tracking.tracking_uri='file:///nonexistent/x'", "file store")),
    _workdir("tracking-dead-server", "{d}/work", "--tracking-uri",
             f"http://127.0.0.1:{_free_port()}",
             needles=("tracking.tracking_uri='http://127.0.0.1:", "no MLflow server answers there",
                      "Connection refused", "start it or fix the URI")),
    _workdir("tracking-not-a-database", "{d}/work", "--tracking-uri", "sqlite:///{d}/notes.db",
             files={"notes.db": "these are notes, not a database\n" * 100},
             needles=("tracking.tracking_uri=", "is not a usable SQLite database")),
    _workdir("tracking-in-memory", "{d}/work", "--tracking-uri", "sqlite://",
             needles=("tracking.tracking_uri='sqlite://'", "an in-memory store keeps nothing")),
    _workdir("tracking-unknown-scheme", "{d}/work", "--tracking-uri", "foo://bar",
             needles=("tracking.tracking_uri='foo://bar'", "MLflow cannot use it")),
    # -- points to evaluate first
    _run("point-outside-space", "--set", _POINT % ("100", 0),
         needles=("search.points_to_evaluate[0].lr=100", "use a number in")),
    _run("point-incomplete", "--set", "search.points_to_evaluate=[{num_stages: 1}]",
         needles=("search.points_to_evaluate[0].lr=None", "missing")),
    _run("point-is-baseline", "--set", "train.lr=0.002", "--set", "train.warmup_steps=3",
         "--set", _POINT % ("0.002", 3), needles=("search.points_to_evaluate[0]=", "is the baseline")),
    _run("points-over-budget", "--trials", "2", "--set",
         "search.points_to_evaluate=[{lr: 1}, {lr: 2}]",
         needles=("search.points_to_evaluate='2 point(s)'", "num_trials >= 3")),
    # -- YAML: keys given twice, huge values
    _yaml("duplicate-key", "train:\n  lr: 0.1\n  lr: 0.2\n", "config=",
          "key 'lr' is given twice (line 2 and line 3)"),
    _yaml("duplicate-section", "train: {lr: 0.1}\nmodel: {n_layer: 4}\ntrain: {batch_size: 4}\n",
          "config=", "key 'train' is given twice (line 1 and line 3)", "merge them"),
    _yaml("huge-unknown-value", f"train: {{lr_typo: {_HUGE}}}\n", "train.lr_typo='xxx",
          "(1,000,000 characters): unknown key"),
    # -- numeric bounds (the config's, so YAML, --set and flags share them)
    _yaml("trials-huge", "search: {num_trials: 1e9}\n", "search.num_trials=1000000000",
          "not a laptop or cluster search"),
    _yaml("budget-below-baseline", "budget: {factor: 0.5}\n", "budget.factor=0.5",
          "leaves the baseline", "smallest factor that fits is 1"),
    _run("trials-huge", "--trials", "1000000000",
         needles=("--trials=1000000000", "more than 10,000 trials", "search.num_trials")),
    _run("budget-factor-huge", "--budget-factor", "1e9",
         needles=("--budget-factor=1000000000.0", "above 100×", "raise schedule.baseline_steps")),
    _run("budget-factor-tiny", "--budget-factor", "1e-9",
         needles=("--budget-factor=1e-09", "smallest factor that fits is 1")),
    _run("seeds-huge", "--seeds", "1000", needles=("--seeds=1000", "more than 100 seeds")),
    # -- the same bad value is refused by every command, before anything is created
    *_bad_everywhere("seed-negative", "train.seed=-5", needles=("train.seed=-5", "use >= 0")),
    *_bad_everywhere("steps-huge", "schedule.baseline_steps=1e12",
                     needles=("schedule.baseline_steps=", "more than 10,000,000 optimizer steps")),
    *_bad_everywhere("budget-below-baseline", "budget.factor=0.3",
                     needles=("budget.factor=0.3", "smallest factor that fits is 1")),
    *_bad_everywhere("continual-both-ways", "schedule.continual_steps=10",
                     "schedule.continual_multiple=0.5",
                     needles=("schedule.continual_multiple=0.5", "drop one of the two")),
    *_bad_everywhere("phase1-dropped", "schedule.num_stages=4", "schedule.baseline_steps=7",
                     needles=("schedule.baseline_steps=7", "stage 4 of 4 gets 1 step(s)")),
    # -- estimate: contradictions are refused, not silently resolved
    _run("stages-vs-increments", "--stages", "3", "--increments", "2,2", command="estimate",
         needles=("--stages=3", "contradicts schedule.increments=[2, 2] (2 stages)")),
    _run("increments-empty", "--increments", "", command="estimate",
         needles=("--increments=''", "comma-separated layer counts")),
    _run("phase1-dropped-flag", "--stages", "4", command="estimate",
         sets=("schedule.baseline_steps=7",),
         needles=("schedule.baseline_steps=7", "stage 4 of 4 gets 1 step(s)", "are enough")),
    _run("stages-over-budget", "--stages", "3", "--set", "budget.factor=0.3", command="estimate",
         needles=("budget.factor=0.3", "smallest factor that fits is 1")),
    # -- data, refused before train creates --out
    _run("txt-binary", "--set", "data.source={d}/blob.txt", files={"blob.txt": _BINARY},
         command="train", needles=("data.source=", "blob.txt", "are not UTF-8", "%)")),
    _run("too-few-tokens-for-a-batch", "--set", "data.source={d}/small.txt",
         files={"small.txt": _words(1500)}, command="train",
         needles=("data.source=", "one train batch (8×32)")),
    # -- train flags
    _run("workers-zero", "--workers", "0", command="train", needles=("--workers=0", "at least 1")),
    _run("out-not-empty", "--out", "{d}", files={"keep.txt": "x"}, command="train",
         needles=("--out=", "not empty; pass --resume")),
    _run("out-top-level", "--out", "/opt", command="train",
         needles=("--out='/opt'", "a top-level system directory")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "in"
    scratch.mkdir()
    for name, content in (case.files or {}).items():
        p = scratch / name
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    before = set(tmp_path.rglob("*"))
    code = main(case.argv(scratch))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in case.needles:
        assert needle in lines[0], lines[0]
    assert set(tmp_path.rglob("*")) == before, "nothing may be created"


# ---------------------------------------------------------------------------------------------
# report / ui / resume on real stores


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A work directory with a real study (baseline included), one without a baseline, a study
    directory whose study.json is torn, and one whose Optuna storage is missing."""
    from stagetune.results import MlflowTracker

    root = tmp_path_factory.mktemp("stores")
    good = root / "good"
    uri = f"sqlite:///{good / 'mlflow.db'}"
    rec = {"tokens": 256, "flops": 1e9, "flops_paper": 5e8, "eval_loss": 5.0, "step": 1}
    tr = MlflowTracker(uri, "study-a", spool_dir=good / "spool")
    tr.start_study(study_name="study-a", params={}, tags={})
    tr.start_trial(trial_id="base_0", params={"seed": 0}, tags={"stagetune.is_baseline": True})
    tr.log_report("base_0", rec)
    tr.end_trial("base_0", "finished")
    tr.end_study()
    nb = MlflowTracker(uri, "no-baseline", spool_dir=good / "spool")
    nb.start_study(study_name="no-baseline", params={}, tags={})
    nb.start_trial(trial_id="x_0", params={"seed": 0}, tags={})
    nb.log_report("x_0", rec)
    nb.end_study()
    (good / "study.json").write_text(json.dumps({"name": "study-a", "tracking": {}}))
    torn = root / "torn"
    torn.mkdir()
    (torn / "study.json").write_text('{"name": "x", "trac')
    no_optuna = root / "no-optuna"
    no_optuna.mkdir()
    from stagetune.config import config_to_dict, load_config

    (no_optuna / "study.json").write_text(json.dumps(config_to_dict(load_config())))
    resumable = root / "resumable"
    resumable.mkdir()
    (resumable / "study.json").write_text(json.dumps(config_to_dict(load_config())))
    optuna.create_study(storage=f"sqlite:///{resumable / 'optuna.db'}", study_name="x")
    return {"root": root, "good": good, "torn": torn, "no_optuna": no_optuna,
            "resumable": resumable}  # fmt: skip


def _busy_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


STORE_CASES: list[tuple[str, Callable[[dict[str, Path]], list[str]], tuple[str, ...]]] = [
    ("report-unknown-experiment",
     lambda s: ["report", "--workdir", str(s["good"]), "--experiment", "nope"],
     ("nope", "study-a", "no-baseline")),
    ("report-no-baseline",
     lambda s: ["report", "--workdir", str(s["good"]), "--experiment", "no-baseline"],
     ("'no-baseline'", "no baseline run", "run the baseline schedule")),
    ("report-empty-workdir", lambda s: ["report", "--workdir", str(s["root"] / "empty")],
     ("--experiment=None", "no study in", "pass --experiment NAME")),
    ("report-missing-store",
     lambda s: ["report", "--workdir", str(s["root"] / "empty"), "--experiment", "e",
                "--tracking-uri", f"sqlite:///{s['root'] / 'typo.db'}"],
     ("typo.db", "no MLflow database")),
    ("report-tracking-garbage",
     lambda s: ["report", "--workdir", str(s["good"]), "--tracking-uri", "garbage"],
     ("--tracking-uri='garbage'", "file store")),
    ("report-torn-study-file", lambda s: ["report", "--workdir", str(s["torn"])],
     ("study.json", "unreadable")),
    ("resume-empty-workdir", lambda s: ["run", "--resume", "--workdir", str(s["root"] / "empty")],
     ("--resume=", "no study in this work directory")),
    ("resume-torn-study-file", lambda s: ["run", "--resume", "--workdir", str(s["torn"])],
     ("--resume=", "study.json", "unreadable")),
    ("resume-no-optuna", lambda s: ["run", "--resume", "--workdir", str(s["no_optuna"])],
     ("--resume=", "no Optuna storage")),
    ("resume-with-trials", lambda s: ["run", "--resume", "--workdir", str(s["good"]),
                                      "--trials", "9"],
     ("--trials=9", "continues the study with the config it started with")),
    ("resume-with-set", lambda s: ["run", "--resume", "--workdir", str(s["good"]),
                                   "--set", "train.lr=1"],
     ("--set='train.lr=1'", "drop the flag")),
    ("resume-tracking-garbage",
     lambda s: ["run", "--resume", "--workdir", str(s["resumable"]), "--tracking-uri", "garbage"],
     ("tracking.tracking_uri='garbage'", "file store")),
    ("resume-tracking-file-uri",
     lambda s: ["run", "--resume", "--workdir", str(s["resumable"]), "--tracking-uri",
                "file:///nonexistent/x"],
     ("tracking.tracking_uri='file:///nonexistent/x'", "file store")),
    ("resume-tracking-dead-server",
     lambda s: ["run", "--resume", "--workdir", str(s["resumable"]), "--tracking-uri",
                f"http://127.0.0.1:{_free_port()}"],
     ("no MLflow server answers there", "Connection refused")),
    ("run-into-a-study", lambda s: ["run", "--workdir", str(s["good"])],
     ("workdir=", "holds study 'study-a'", "continue it with --resume or choose another --workdir")),
    ("ui-port-range", lambda s: ["ui", "--workdir", str(s["good"]), "--port", "70000"],
     ("--port=70000", "0-65535")),
    ("ui-bad-host", lambda s: ["ui", "--workdir", str(s["good"]), "--host", "999.1.1.1",
                               "--port", "0"],
     ("ui.host='999.1.1.1'", "not a resolvable address")),
    ("ui-foreign-host", lambda s: ["ui", "--workdir", str(s["good"]), "--host", "192.0.2.254",
                                   "--port", "0"],
     ("ui.host='192.0.2.254'", "not an address of this machine")),
    ("ui-no-store", lambda s: ["ui", "--workdir", str(s["root"] / "empty"), "--port", "0"],
     ("no MLflow database", "run a study first")),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "needles"), [c[1:] for c in STORE_CASES],
                         ids=[c[0] for c in STORE_CASES])  # fmt: skip
def test_bad_input_on_stores(
    argv: Callable[[dict[str, Path]], list[str]],
    needles: tuple[str, ...],
    stores: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(stores["root"])
    before = {p: p.stat().st_mtime_ns for p in stores["root"].rglob("*")}
    code = main(argv(stores))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    after = {p: p.stat().st_mtime_ns for p in stores["root"].rglob("*")}
    changed = sorted(str(p) for p in set(after) | set(before) if after.get(p) != before.get(p))
    assert not changed, "nothing may be created or changed"


def _hashes(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                     p.stat().st_mtime_ns) for p in root.rglob("*")}  # fmt: skip


def test_fresh_run_into_a_study_changes_nothing(
    stores: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: a new study with another depth in an L=4 study's directory."""
    good = stores["good"]
    before = _hashes(good)
    assert main(["run", "--workdir", str(good), "--set", "model.n_layer=2", *fast_args()]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "holds study 'study-a'; continue it with --resume" in lines[0]
    assert _hashes(good) == before


def test_home_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)  # empty: refused for what it is, not for what it holds
    monkeypatch.setenv("HOME", str(home))
    for workdir, what in (("~/", "your home directory"),
                          (str(home.parent), "an ancestor of your home directory")):  # fmt: skip
        assert main(["run", "--workdir", workdir, *fast_args()]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and what in lines[0] and f"e.g. {home}/stagetune-work" in lines[0]
    assert not any(home.iterdir())


def test_unresponsive_tracking_server_is_refused_in_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that accepts the connection and never answers: one short attempt, not
    MLflow's default of retries with 120 s timeouts (minutes)."""
    from stagetune.results.store import PROBE_TIMEOUT_S

    with _busy_port() as s:  # listens (the kernel completes the handshake), never answers
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        code = main(["run", "--workdir", str(tmp_path / "work"), "--tracking-uri", uri,
                     *fast_args()])  # fmt: skip
        elapsed = time.monotonic() - t0
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"no answer within {PROBE_TIMEOUT_S} s" in lines[0]
    assert elapsed < 4 * PROBE_TIMEOUT_S, elapsed  # a bound relative to the probe's own limit
    assert not (tmp_path / "work").exists()


def test_file_store_is_left_to_mlflow_when_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow 3 takes a file store only with MLFLOW_ALLOW_FILE_STORE=true: then so do we."""
    from stagetune.results.store import check_tracking_uri

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracking_uri((tmp_path / "mlruns").as_uri())
    assert not any(tmp_path.iterdir())


def test_ui_port_in_use(stores: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with _busy_port() as s:
        port = s.getsockname()[1]
        assert main(["ui", "--workdir", str(stores["good"]), "--port", str(port)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"ui.port={port}" in lines[0] and "in use" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["resources.gpus_per_worker=1"], ("resources.gpus_per_worker=1.0", "the cluster has 0")),
        (["resources.workers_per_trial=8", "train.batch_size=8"],
         ("resources.workers_per_trial=8", "need 8 CPUs but the cluster has 2")),
        (["resources.cpus_per_worker=3"], ("resources.workers_per_trial=1", "need 3 CPUs")),
    ],
    ids=["gpus", "workers", "cpus-per-worker"],
)
def test_impossible_resources(
    overrides: list[str],
    needles: tuple[str, ...],
    ray_local: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workdir = tmp_path / "work"
    code = main(["run", "--workdir", str(workdir), *fast_args(*overrides)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not workdir.exists()
