"""Slurm batch execution: job arrays through submitit, a record of what was submitted, and states.

A run that fans out (a study's cases) submits its unfinished items as one Slurm job array
(:func:`submit_array`, through submitit's ``SlurmExecutor``) and writes what went where in
``OUT/jobs.json`` (:class:`JobBook`: each item with its Slurm job id and attempt). Nothing
else is kept about a job: its state comes from ``squeue`` while it is queued or running
(``sacct`` needs a Slurm database that many clusters, and the test cluster, lack) and from
the item's own result file once it has run. An item whose job left the queue without a
result (cancelled, timed out, preempted, a node lost) is submitted again by the next call;
an item with a result is never recomputed.

The ``[run.slurm]`` table of a study file and the command line's ``--slurm-*`` options give
:class:`SlurmOptions`; each key maps to one sbatch option (see :data:`SBATCH_OPTION`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from workflows.common import write_json_atomic

__all__ = ["HPCError", "SlurmOptions", "SBATCH_OPTION", "slurm_options", "require_slurm", "submit_array",
           "queue_states", "JobBook", "item_state", "mpi_command", "wait_for"]

#: Each [run.slurm] key and the sbatch option it becomes.
SBATCH_OPTION = {
    "partition": "--partition",
    "time_min": "--time (minutes)",
    "cpus_per_task": "--cpus-per-task",
    "mem_gb": "--mem (GB)",
    "account": "--account",
    "qos": "--qos",
    "array_parallelism": "--array=0-N%P (P tasks at once)",
    "extra": "--KEY=VALUE for each entry (any other sbatch option)",
}


class HPCError(ValueError):
    """A batch-system request that cannot be made (the message says what to change)."""


@dataclass
class SlurmOptions:
    """sbatch settings of a job array (see :data:`SBATCH_OPTION`)."""

    partition: str | None = None
    time_min: int = 60
    cpus_per_task: int = 1
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 32
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("time_min", "cpus_per_task", "array_parallelism"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise HPCError(f"[run.slurm] {name} must be a positive integer, got {v!r}")
        if self.mem_gb is not None and (isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float))
                                        or not self.mem_gb > 0):
            raise HPCError(f"[run.slurm] mem_gb must be a positive number of GB, got {self.mem_gb!r}")
        for name in ("partition", "account", "qos"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise HPCError(f"[run.slurm] {name} must be a non-empty string, got {v!r}")
        if not isinstance(self.extra, Mapping) or not all(isinstance(k, str) for k in self.extra):
            raise HPCError("[run.slurm] extra must be a table of sbatch options, e.g. extra = { constraint = \"cpu\" }")
        self.extra = dict(self.extra)

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments of submitit's ``SlurmExecutor.update_parameters``."""
        p: dict[str, Any] = {"time": self.time_min, "cpus_per_task": self.cpus_per_task,
                             "array_parallelism": self.array_parallelism}
        for k in ("partition", "account", "qos"):
            if getattr(self, k):
                p[k] = getattr(self, k)
        if self.mem_gb is not None:
            p["mem"] = f"{int(round(self.mem_gb * 1024))}M"
        if self.extra:
            p["additional_parameters"] = {k.replace("-", "_"): v for k, v in self.extra.items()}
        return p


def slurm_options(table: Mapping | None = None, overrides: Mapping | None = None) -> SlurmOptions:
    """:class:`SlurmOptions` from a ``[run.slurm]`` table, then the command line's ``overrides``
    (None values ignored); unknown keys are refused by name."""
    known = {f.name for f in fields(SlurmOptions)}
    merged: dict[str, Any] = {}
    for source, where in ((table or {}), "[run.slurm]"), ((overrides or {}), "the command line"):
        unknown = sorted(set(source) - known)
        if unknown:
            raise HPCError(f"{where}: unknown Slurm option(s) {unknown}; known: {sorted(known)}")
        merged.update({k: v for k, v in source.items() if v is not None and not (k == "extra" and not v)})
    if overrides and overrides.get("extra") and table and table.get("extra"):
        merged["extra"] = {**table["extra"], **overrides["extra"]}
    return SlurmOptions(**merged)


def require_slurm() -> None:
    """Raise :class:`HPCError` unless ``sbatch`` and ``squeue`` are on PATH and answer."""
    missing = [c for c in ("sbatch", "squeue") if shutil.which(c) is None]
    if missing:
        raise HPCError(f"--executor slurm needs Slurm's {' and '.join(missing)} on PATH (run on a cluster's "
                       "login node, or use --executor local)")
    r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    if r.returncode != 0:
        raise HPCError(f"Slurm does not answer (squeue: {r.stderr.strip() or r.returncode}): is slurmctld up?")


def submit_array(fn: Callable, args: Sequence[tuple], folder: Path, options: SlurmOptions, name: str) -> list[str]:
    """Submit ``fn(*a)`` for each ``a`` in ``args`` as one job array; returns the task job ids
    (``"<array id>_<index>"``) in the order of ``args``. submitit's logs and pickles go to
    ``folder/<job id>/``."""
    import submitit

    ex = submitit.SlurmExecutor(folder=Path(folder) / "%j", max_num_timeout=0)
    ex.update_parameters(job_name=name, **options.executor_parameters())
    columns = list(zip(*args)) if args else []
    jobs = ex.map_array(fn, *columns)
    return [str(j.job_id) for j in jobs]


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Slurm state (PENDING, RUNNING, COMPLETING, ...) of each of ``job_ids`` still in the queue
    (array tasks one by one, ``squeue -r``); ids no longer queued are absent."""
    ids = sorted({str(j).split("_")[0] for j in job_ids})
    if not ids:
        return {}
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)], capture_output=True, text=True)
    if r.returncode != 0:  # (squeue refuses ids it no longer knows: ask for them all)
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True)
    states = {}
    for line in r.stdout.splitlines():
        if "|" in line:
            jid, st = line.strip().split("|", 1)
            states[jid] = st
    return {j: states[j] for j in map(str, job_ids) if j in states}


class JobBook:
    """What was submitted for a run folder: ``jobs.json`` with one entry per submission of an
    item (``item``, ``job_id``, ``attempt``, ``submitted``, ``kind``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: list[dict] = json.loads(self.path.read_text())["entries"] if self.path.is_file() else []

    def latest(self, item: str) -> dict | None:
        rows = [e for e in self.entries if e["item"] == item]
        return rows[-1] if rows else None

    def add(self, kind: str, items: Sequence[str], job_ids: Sequence[str]) -> None:
        for item, jid in zip(items, job_ids):
            prev = self.latest(item)
            self.entries.append({"kind": kind, "item": item, "job_id": jid, "submitted": time.time(),
                                 "attempt": 1 + (prev["attempt"] if prev else 0)})
        write_json_atomic(self.path, {"executor": "slurm", "entries": self.entries})

    def active(self) -> dict[str, str]:
        """``{item: Slurm state}`` of the items whose latest job is still queued or running."""
        latest = {e["item"]: e for e in self.entries}
        states = queue_states([e["job_id"] for e in latest.values()])
        return {item: states[e["job_id"]] for item, e in latest.items() if e["job_id"] in states}


def item_state(book: JobBook, item: str, result: Path, active: Mapping[str, str]) -> dict:
    """One row of ``digipat jobs``: ``item``, ``state`` (done, failed, pending, running,
    requeued, lost, not submitted), ``job_id``, ``attempt`` and ``error`` (for failed)."""
    e = book.latest(item)
    row: dict[str, Any] = {"item": item, "job_id": e["job_id"] if e else None, "attempt": e["attempt"] if e else 0}
    if result.is_file():
        rec = json.loads(result.read_text())
        row["state"] = "failed" if "error" in rec else "done"
        if "error" in rec:
            row["error"] = rec["error"]
    elif item in active:
        st = active[item].lower()
        row["state"] = ("requeued" if e and e["attempt"] > 1 and st == "pending" else
                        "running" if st in ("running", "completing", "configuring") else st)
    elif e is not None:
        row["state"] = "lost"  # left the queue without a result: the next call submits it again
    else:
        row["state"] = "not submitted"
    return row



def mpi_command(n: int, mpiexec: str = "mpiexec") -> list[str]:
    """How to start ``n`` MPI ranks here. Inside a Slurm job (``SLURM_JOB_ID`` set and ``srun``
    on PATH): ``srun --overlap --mpi=pmi2 --ntasks n`` (a step of the allocation; ``--overlap``
    lets it start from within a running step, as submitit's tasks are; the MPICH of the
    dolfinx wheel speaks PMI-2). Elsewhere: ``mpiexec -n n``."""
    import os

    if os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
        return ["srun", "--overlap", "--mpi=pmi2", "--ntasks", str(int(n))]
    return [mpiexec, "-n", str(int(n))]


def wait_for(items: Sequence[str], finished: Callable[[str], bool], book: JobBook, say: Callable[[str], None],
             what: str, poll_s: float = 2.0) -> list[str]:
    """Wait until every item is finished or has left the queue without finishing; returns the
    latter (empty when all finished), saying ``"<what>: k/n finished"`` as the count moves."""
    t0, shown = time.perf_counter(), -1
    while True:
        n = sum(1 for i in items if finished(i))
        if n != shown:
            say(f"{what}: {n}/{len(items)} finished, {time.perf_counter() - t0:.0f} s")
            shown = n
        if n == len(items):
            return []
        queued = book.active()
        left = [i for i in items if not finished(i)]
        if not any(i in queued for i in left):
            return left
        time.sleep(poll_s)
