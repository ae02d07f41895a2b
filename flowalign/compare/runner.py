"""Run a comparison's training runs, at most ``parallel`` at once, each in its own subprocess.

A run folder holding ``summary.json`` is finished and kept (not launched again); a folder without one is
resumed (``flowalign train ... --resume``: the newest checkpoint, or a fresh start when there is none); a missing
folder is trained from scratch. A failed run is recorded and the others go on. Each launch appends its output to
``<run dir>.log`` and (re)writes ``<run dir>.compare_run.json``: recipe, seed, status, wall_s (all launches of
this run together), threads, command, returncode, git commit.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from flowalign.compare.plan import ComparePlan, RunSpec
from flowalign.utils.io import write_text

FINISHED, FAILED = "finished", "failed"


@dataclass(frozen=True)
class Launch:
    """One subprocess to start: ``argv`` in ``cwd`` with ``env``, its stdout and stderr appended to ``log_path``."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path


#: starts a launch, waits for it and returns its exit code (tests inject their own)
Launcher = Callable[[Launch], int]


@dataclass
class RunRecord:
    """What ``compare_run.json`` holds. ``action``: kept (finished earlier), fresh or resumed."""

    recipe: str
    name: str
    seed: int
    status: str
    action: str
    run_dir: str
    log: str
    threads: int | None = None
    command: str | None = None
    returncode: int | None = None
    wall_s: float | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    finished_at: str | None = None
    error: str | None = None


def subprocess_launcher(launch: Launch) -> int:
    """Run ``launch`` to completion, appending a header line and then its output to its log."""
    with open(launch.log_path, "a") as log:
        log.write(f"\n=== {_now()} in {launch.cwd}: {shlex.join(launch.argv)}\n")
        log.flush()
        return subprocess.run(launch.argv, stdout=log, stderr=subprocess.STDOUT, env=launch.env,
                              cwd=launch.cwd, check=False).returncode


def run_state(run: RunSpec) -> str:
    """``finished`` (summary.json present), ``unfinished`` (the folder exists) or ``new``."""
    if (run.run_dir / "summary.json").is_file():
        return "finished"
    return "unfinished" if run.run_dir.exists() else "new"


def execute(plan: ComparePlan, launcher: Launcher = subprocess_launcher,
            echo: Callable[[str], None] = print) -> list[RunRecord]:
    """Run every run of ``plan`` that is not finished; the records of all runs, in the plan's order."""
    commit, dirty = git_state(Path.cwd())
    total = len(plan.runs)
    done, lock = [0], threading.Lock()

    def one(run: RunSpec) -> RunRecord:
        record = _run_one(run, plan.threads, launcher, commit, dirty)  # each thread writes its own run's files
        wall = f" in {record.wall_s:.1f} s" if record.wall_s is not None and record.action != "kept" else ""
        with lock:
            done[0] += 1
            echo(f"[{done[0]}/{total}] {run.name} seed={run.seed}: {record.status} ({record.action}){wall}"
                 + (f" — see {run.log_path}" if record.status == FAILED else ""))
        return record

    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        return list(pool.map(one, plan.runs))


def _run_one(run: RunSpec, threads: int, launcher: Launcher, commit: str | None, dirty: bool | None) -> RunRecord:
    state = run_state(run)
    earlier = read_record(run)
    if state == "finished":
        if earlier is not None and earlier.status == FINISHED:
            earlier.action = "kept"
            return earlier
        record = _new_record(run, FINISHED, "kept")
        write_text(run.record_path, json.dumps(asdict(record), indent=2))
        return record
    resume = state == "unfinished"
    argv = [sys.executable, "-m", "flowalign", *run.train_args(resume)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    error = None
    try:
        returncode = launcher(Launch(argv, env, run.log_path, Path.cwd()))
    except OSError as err:  # the launcher could not start the process
        returncode, error = None, f"could not start: {err}"
    wall = time.perf_counter() - start
    # a resumed run adds up its launches; a fresh one (its folder deleted to train it again) starts from zero
    previous = earlier.wall_s if resume and earlier is not None and earlier.wall_s is not None else 0.0
    finished = returncode == 0 and (run.run_dir / "summary.json").is_file()
    if returncode == 0 and not finished:
        error = f"exited 0 but wrote no {run.run_dir / 'summary.json'}"
    elif returncode is not None and returncode < 0:
        error = f"killed by signal {-returncode}"
    elif returncode not in (0, None):
        error = f"exited with code {returncode}"
    record = _new_record(run, FINISHED if finished else FAILED, "resumed" if resume else "fresh",
                         threads=threads, command=shlex.join(argv), returncode=returncode,
                         wall_s=previous + wall, git_commit=commit, git_dirty=dirty, error=error)
    write_text(run.record_path, json.dumps(asdict(record), indent=2))
    return record


def _new_record(run: RunSpec, status: str, action: str, **fields) -> RunRecord:
    return RunRecord(recipe=str(run.recipe), name=run.name, seed=run.seed, status=status, action=action,
                     run_dir=str(run.run_dir), log=str(run.log_path), finished_at=_now(), **fields)


def read_record(run: RunSpec) -> RunRecord | None:
    """The run's ``compare_run.json``, or None when absent or unreadable (it is rewritten then)."""
    try:
        data = json.loads(run.record_path.read_text())
        return RunRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files differ from it) of the repository holding ``folder``, or Nones."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
