"""`make chaos` / `python scripts/chaos.py`: kill-and-retry runs of the demo pipeline.

Prints one line per run, a summary, and last `runs=N lost=X duplicated=Y orphan_jobs=Z`;
exits 0 only when X = Y = Z = 0, every run succeeded and every check passed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from chaos import checks, kills, procs
from chaos.airflow_stack import REPO, AirflowStack
from chaos.celery_stack import CeleryStack
from chaos.runner import Options, Session, summary


def parse_args(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="pipeline runs, one kill each (20)")
    p.add_argument("--seed", type=int, default=None, help="seed for kill targets and moments")
    p.add_argument("--records", type=int, default=300, help="valid input records per run (300)")
    p.add_argument("--shards", type=int, default=2, help="input shards = index_shard tasks (2)")
    p.add_argument("--job-groups", type=int, default=2,
                   help="transform jobs per run (max_records_per_job = records / this; 2)")
    p.add_argument("--retries", type=int, default=3, help="task retries (BATCHVEC_RETRIES, 3)")
    p.add_argument("--modes", default="", help="comma-separated kill modes used in turn instead "
                   f"of a weighted draw: {', '.join([*kills.MODES, *kills.CELERY_MODES])} or "
                   "task:<task_id>")
    p.add_argument("--executor", choices=("local", "celery"), default="local",
                   help="LocalExecutor (default) or CeleryExecutor: redis + two Celery workers, "
                   "and the kill mode `worker` (a whole worker SIGKILLed)")
    p.add_argument("--keep", action="store_true",
                   help="leave Airflow and the devstack running afterwards (for debugging)")
    p.add_argument("--stop", type=Path, metavar="DIR",
                   help="stop what an earlier --keep session left running in DIR, and exit")
    p.add_argument("--dir", type=Path, default=None, help="work dir (default: a new temp dir)")
    a = p.parse_args(argv)
    if a.runs < 1 or not 10 <= a.records <= 9000 or a.shards < 1 or a.job_groups < 1:
        p.error("--runs >= 1, --records 10..9000, --shards >= 1 and --job-groups >= 1")
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in kills.MODES and m not in kills.CELERY_MODES and not m.startswith("task:"):
            p.error(f"unknown kill mode {m!r}")
        if m in kills.CELERY_MODES and a.executor != "celery":
            p.error(f"kill mode {m!r} needs --executor celery")
    if a.seed is None:
        a.seed = int(time.time()) % 100000
    return Options(runs=a.runs, seed=a.seed, records=a.records, shards=a.shards,
                   job_groups=a.job_groups, retries=a.retries, modes=modes, keep=a.keep, executor=a.executor), a


def stop_dir(root: Path) -> int:
    from devstack import launcher

    info = json.loads((root / "chaos-stack.json").read_text())
    left = procs.terminate_all(procs.stack_processes(info["stack_id"], str(root.resolve())))
    launcher.down(root / "devstack")
    print(f"chaos: stopped the stack in {root}" + (f"; still alive: {left}" if left else ""))
    return 1 if left else 0


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opts, args = parse_args(argv)
    if args.stop:
        return stop_dir(args.stop)
    sys.path.insert(0, str(REPO / "scripts"))
    from devstack import launcher, seed
    from devstack_connections import airflow_env as devstack_airflow_env

    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    root = (args.dir or Path(tempfile.mkdtemp(prefix="batchvec-chaos-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    state = root / "devstack"
    print(f"chaos: {opts.runs} runs, seed {opts.seed}, {opts.records} records + 2 bad lines, "
          f"{opts.shards} shards, retries {opts.retries}, {opts.executor} executor; work dir {root}",
          flush=True)
    started = time.monotonic()
    stack, ok = None, False
    try:
        endpoints = launcher.up(state, ports=launcher.random_ports())
        seed.ensure_sagemaker_model(endpoints)
        kind = CeleryStack if opts.executor == "celery" else AirflowStack
        stack = kind(root, devstack_airflow_env(endpoints), retries=opts.retries,
                     extra_env={"BATCHVEC_BULK_MAX_ACTIONS": str(opts.bulk_max_actions),
                                "BATCHVEC_CHECKPOINT_LINES": str(opts.checkpoint_lines)})
        (root / "chaos-stack.json").write_text(json.dumps(
            {"stack_id": stack.stack_id, "api": stack.api, "airflow_home": str(stack.home)}))
        stack.start()
        print(f"chaos: devstack + Airflow up in {time.monotonic() - started:.0f}s "
              f"(api {stack.api}, logs {stack.logs})", flush=True)
        session = Session(opts, root, endpoints, stack, state,
                          out=lambda line: print(line, flush=True))
        t0 = time.monotonic()
        results, total = session.run_all()
        for line in summary(results, time.monotonic() - t0):
            print(line)
        print(checks.result_line(len(results), total), flush=True)
        ok = total.clean and all(r.state == "success" for r in results)
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return 130
    finally:
        if opts.keep:
            print(f"chaos: --keep: left running; stop with: scripts/chaos.py --stop {root}")
        else:
            left = stack.stop() if stack else []
            launcher.down(state)
            print(f"chaos: stopped Airflow and the devstack ({time.monotonic() - started:.0f}s "
                  f"in all)" + (f"; processes still alive: {left}" if left else ""), flush=True)
            if ok and args.dir is None and not left:
                shutil.rmtree(root, ignore_errors=True)  # kept after a failure: logs are there
            elif not ok:
                print(f"chaos: Airflow task logs under {root / 'airflow-home' / 'logs'}")
