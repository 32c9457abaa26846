"""The regime sweep (issue 12): where does incremental training stop paying, on 2 CPU cores?

Run from the repository root (with stagetune installed)::

    python benchmarks/sweep_regime.py             # the full sweep: ≈ 60 min on an idle 2-core box
    python benchmarks/sweep_regime.py --sizes 4x32 --tokens-per-param 0.3,2,12 --seeds 2 \\
        --reference-lrs 2                          # a reduced, faithful version (≈ 10 min)
    python benchmarks/sweep_regime.py --json      # one JSON object on stdout

It runs exactly ``stagetune sweep`` (in-process, the ``tiny`` preset's training settings, data
``pysources`` with the sweep's own corpus cap) and then reads MLflow for what the sweep did:

* **the finding**: the sweep's report (per length: the best incremental schedule's compute
  fraction to the tuned reference's loss and Δ loss at equal compute, 95 % CIs over seeds; the
  trend in log tokens-per-parameter and the crossover, or "no crossover in the measured range");
* **throughput**: training tokens of every trial over the training-step seconds they took
  (each trial's ``seconds`` metric counts only its optimizer steps), and per wall second;
* **orchestration overhead**: everything but training steps, as a share of the sweep's wall
  time: ``1 − Σ trial step seconds / (wall × concurrent trial slots)``. Evaluations, Ray and
  trial start-up, MLflow, the report are all overhead here. On a machine shared with other
  work the slots are not all the sweep's, which inflates it; the load average is printed.

Default (the full configuration): GPT-2 L=4 d=64 (≈ 0.20M non-embedding parameters), lengths
0.3, 1.4, 6.5 and 30 tokens per non-embedding parameter (4 log-spaced points, ratio ≈ 4.6),
3 seeds, the reference's lr sweep at 0.5× and 2× the configured lr, the paper's S=2 and S=4
and G_stack, each schedule at the same three lrs as the reference: per length 2 + 1 + 9 trials
on the study's seed, then the reference and the 3 best incremental points on 2 more seeds
(8): 80 trials.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import machine, set_offline_env

DEFAULT_SIZES = "4x64"
DEFAULT_LENGTHS = "0.3,1.4,6.5,30"
DEFAULT_SEEDS = 3
DEFAULT_REFERENCE_LRS = "0.5,2"
NAME = "regime-sweep"


def _trial_numbers(tracking_uri: str) -> dict[str, float]:
    """Σ step seconds and Σ tokens over every finished trial of the sweep's experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs(
        [exp.experiment_id], "tags.`stagetune.role` = 'trial'", max_results=5000
    )
    seconds = sum(r.data.metrics.get("seconds", 0.0) for r in runs)
    tokens = sum(r.data.metrics.get("tokens", 0.0) for r in runs)
    # A trial's MLflow run spans the driver's trial start to its completion: its actor running
    # the trial (steps, evaluations, checkpoints, reports). What the slots spend outside them is
    # Ray, actor start-up, phase boundaries and the driver's own work.
    spans = [
        (r.info.end_time - r.info.start_time) / 1000
        for r in runs
        if r.info.end_time and r.info.start_time
    ]
    (sweep,) = client.search_runs(
        [exp.experiment_id], "tags.`stagetune.role` = 'sweep'", max_results=1
    )
    return {
        "sweep_started": sweep.info.start_time / 1000,
        "trials": len(runs),
        "step_seconds": seconds,
        "tokens": tokens,
        "trial_span_seconds": sum(spans),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default=DEFAULT_SIZES)
    p.add_argument("--tokens-per-param", default=DEFAULT_LENGTHS)
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    p.add_argument("--reference-lrs", default=DEFAULT_REFERENCE_LRS)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--workdir", help="sweep work directory (default: a fresh temporary one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    set_offline_env()
    from stagetune.cli import main as stagetune

    load = os.getloadavg()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sweep-regime-")) / "sweep"
    cmd = [
        "sweep",
        "--workdir",
        str(workdir),
        "--set",
        f"name={NAME}",
        "--sizes",
        args.sizes,
        "--tokens-per-param",
        args.tokens_per_param,
        "--seeds",
        str(args.seeds),
        "--reference-lrs",
        args.reference_lrs,
        "--quiet",
        "--json",
        *[x for o in args.overrides for x in ("--set", o)],
    ]
    print(f"[sweep_regime] stagetune {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0, t0_epoch = time.perf_counter(), time.time()
    out_path = workdir.parent / "sweep.out.json"
    with open(out_path, "w") as out:
        old = sys.stdout
        sys.stdout = out
        try:
            rc = stagetune(cmd)
        finally:
            sys.stdout = old
    wall = time.perf_counter() - t0
    if rc != 0:
        print(f"[sweep_regime] the sweep failed (rc {rc})", file=sys.stderr)
        return rc
    report = json.loads(out_path.read_text())
    nums = _trial_numbers(f"sqlite:///{workdir / 'mlflow.db'}")
    import ray

    slots = (
        int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        if ray.is_initialized()
        else (os.cpu_count() or 1)
    )
    result: dict[str, Any] = {
        "command": "python benchmarks/sweep_regime.py " + " ".join(argv or sys.argv[1:]),
        "wall_s": wall,
        **nums,
        "slots": slots,
        "tokens_per_step_second": nums["tokens"] / nums["step_seconds"]
        if nums["step_seconds"]
        else None,
        "tokens_per_wall_second": nums["tokens"] / wall,
        "orchestration_overhead": 1 - nums["step_seconds"] / (wall * slots),
        # Preparing the corpus (tokenizing it on a machine's first sweep at this cap; a cache
        # hit later) and planning, before the sweep's MLflow run opens: a one-time cost, shown
        # apart.
        "setup_s": (setup := nums.pop("sweep_started") - t0_epoch),
        "overhead_after_setup": 1 - nums["step_seconds"] / ((wall - setup) * slots),
        # The overhead split: inside trials (evaluation, checkpoints, reports) and outside them.
        "overhead_in_trials": (nums["trial_span_seconds"] - nums["step_seconds"]) / (wall * slots),
        "overhead_outside_trials": 1 - nums["trial_span_seconds"] / (wall * slots),
        "machine": machine(load),
        "report": report,
    }
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return 0
    print((workdir / "report" / "sweep_report.md").read_text())
    print(
        f"wall {wall:.0f}s, {nums['trials']} trials, {nums['tokens']:.4g} tokens; "
        f"{result['tokens_per_step_second']:.0f} tokens/s in training steps, "
        f"{result['tokens_per_wall_second']:.0f} tokens/s of wall time"
    )
    print(
        f"orchestration overhead: {100 * result['orchestration_overhead']:.1f} % of the wall "
        f"time × {slots} slots (target ≤ 5 %): {100 * result['overhead_in_trials']:.1f} % "
        f"inside trials (evaluation, checkpoints, reports), "
        f"{100 * result['overhead_outside_trials']:.1f} % outside them (Ray, actor start-up, "
        f"phase boundaries, the driver); load {result['machine']}"
    )
    print(
        f"set-up before the sweep's first study (corpus preparation, planning): "
        f"{result['setup_s']:.0f}s; overhead after it: "
        f"{100 * result['overhead_after_setup']:.1f} %"
    )
    print(f"plot: {workdir / 'report' / 'regime_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
