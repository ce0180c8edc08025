"""A sweep's runs spread over GPUs and nodes by submitit: Slurm job arrays, or local worker processes.

`vapt tune --cluster slurm|local|debug` hands each stage of the protocol (the grid, or the ``--fast`` wd and lr
stages, then the seeds) to `submitit_runner`: the stage's unfinished runs are cut into jobs, the jobs run
wherever the cluster puts them, and the driver waits, then reads every run's ``result.json``. Selection, the
summary and resume are those of the sequential runner, because the driver still runs `vapt.training.tune.tune`; only
where the runs execute changes. A job runs its share with `vapt.training.runs.run_specs` (separate Lightning
runs, or K configurations per pass with ``--stack``), so a killed job resumes the same way: finished runs are
skipped, a separate run resumes from its newest good checkpoint, a stacked pass restarts.

submitit is an optional dependency (``pip install vapt-mgpath[sweep]``).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vapt.training.runs import RunSpec, reusable_result, run_specs, spec_identity
from vapt.training.sweep_errors import SweepError

CLUSTERS = ("slurm", "local", "debug")


def _submitit():
    try:
        import submitit
    except ImportError as e:  # an optional extra
        raise SweepError("--cluster needs submitit; install it with pip install 'vapt-mgpath[sweep]' "
                         "(or pip install 'submitit>=1.5,<2').") from e
    return submitit


def run_chunk(cli_args: Sequence[str], specs: Sequence[RunSpec], stack: int, trunk_cache: str | None,
              overwrite: bool = False) -> int:
    """The body of one job: run its share of a stage; returns how many runs it finished."""
    from vapt.quiet import quiet_command

    with quiet_command():
        done = run_specs(cli_args, specs, stack, trunk_cache, log=print, overwrite=overwrite)
    return sum(r is not None for r in done)


def chunks_for(specs: Sequence[RunSpec], cluster: str, workers: int, stack: int) -> list[list[RunSpec]]:
    """Cut a stage's runs into jobs.

    ``local`` / ``debug``: at most ``workers`` jobs (they all start at once), runs dealt round-robin.
    ``slurm``: one array task per run, or per K runs with ``stack=K`` (the array's parallelism is ``workers``).
    """
    if not specs:
        return []
    if cluster == "slurm":
        size = max(1, stack)
        return [list(specs[i:i + size]) for i in range(0, len(specs), size)]
    n = min(max(1, workers), len(specs))
    return [list(specs[i::n]) for i in range(n)]


def submitit_runner(cli_args: Sequence[str], out: str | os.PathLike, cluster: str = "local", workers: int = 2,
                    stack: int = 0, trunk_cache: str | os.PathLike | None = None,
                    parameters: dict[str, Any] | None = None, log: Callable[[str], Any] = print,
                    overwrite: bool = False) -> Callable[[list[RunSpec]], list[dict]]:
    """A ``runner(specs) -> results`` for `vapt.training.tune.tune` that executes each stage as submitit jobs.

    Parameters
    ----------
    cli_args : LightningCLI arguments of every run
    out : path
        The sweep's output folder; submitit's job files and logs go to ``<out>/jobs/``.
    cluster : {"slurm", "local", "debug"}
        Slurm job arrays; local worker processes (one per job, all started at once; with GPUs, job i sees
        GPU ``i mod n``); or in-process (debugging).
    workers : int
        Jobs running at once (Slurm: the array's parallelism).
    stack, trunk_cache
        Passed to `run_specs` inside every job.
    overwrite : bool
        Redo finished runs made with other arguments or files (else such a run is refused as stale before any
        job is submitted, as in `vapt.training.runs.reusable_result`).
    parameters : dict, optional
        Extra submitit executor parameters, e.g. ``{"slurm_partition": "gpu", "gpus_per_node": 1,
        "timeout_min": 240, "slurm_additional_parameters": {"account": "x"}}``.
    """
    if cluster not in CLUSTERS:
        raise SweepError(f"--cluster {cluster!r}: choose one of {', '.join(CLUSTERS)}.")
    if workers < 1:
        raise SweepError(f"--workers {workers}: give at least 1.")
    submitit = _submitit()
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise SweepError("--cluster slurm: sbatch is not on PATH (no Slurm here); run the command on a Slurm login "
                         "node, or use --cluster local for worker processes on this machine.")
    folder = Path(out) / "jobs"
    cache = str(trunk_cache) if trunk_cache is not None else None
    params = {"timeout_min": 24 * 60, **(parameters or {})}

    def executor(visible_gpu: int | None = None):
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
        extra = dict(params)
        if cluster == "slurm":
            extra.setdefault("slurm_array_parallelism", workers)
        if visible_gpu is not None:
            extra.update(gpus_per_node=1, local_visible_gpus=[visible_gpu])
        ex.update_parameters(**extra)
        return ex

    def run(specs: list[RunSpec]) -> list[dict]:
        todo = [s for s in specs
                if reusable_result(s, spec_identity(cli_args, s.overrides), overwrite, log, clear=False) is None]
        chunks = chunks_for(todo, cluster, workers, stack)
        if chunks:
            log(f"  submitting {len(todo)} run(s) as {len(chunks)} {cluster} job(s)")
            if cluster == "slurm":
                jobs = executor().map_array(run_chunk, [list(cli_args)] * len(chunks), chunks,
                                            [stack] * len(chunks), [cache] * len(chunks),
                                            [overwrite] * len(chunks))
            else:
                jobs = [executor(_local_gpu(i)).submit(run_chunk, list(cli_args), chunk, stack, cache, overwrite)
                        for i, chunk in enumerate(chunks)]
            _wait(jobs, folder)
        results = [s.finished() for s in specs]
        missing = [str(s.run_dir) for s, r in zip(specs, results) if r is None]
        if missing:
            raise SweepError(f"{len(missing)} run(s) have no result.json after their jobs ended (e.g. {missing[0]}); "
                             f"see the job logs under {folder}, then rerun the same command to resume.")
        return results

    return run


def _local_gpu(i: int) -> int | None:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return i % n if n else None


def _wait(jobs: list, folder: Path) -> None:
    """Wait for every job; one `SweepError` naming the failed ones and their logs."""
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as e:  # noqa: BLE001  (submitit re-raises a job's error, or its death, as any type)
            text = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            failed.append(f"job {job.job_id}: {text[:300]}")
    if failed:
        raise SweepError(f"{len(failed)} of {len(jobs)} job(s) failed ({failed[0]}); logs under {folder}. Rerun the "
                         "same command to resume: finished runs are kept, killed runs resume from their checkpoints.")


def parse_cluster_parameters(text: str | None) -> dict[str, Any]:
    """``--cluster_args '{"slurm_partition": "gpu", "gpus_per_node": 1}'`` -> dict (JSON object only)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SweepError(f"--cluster_args {text!r} is not JSON ({e.msg}); write e.g. "
                         "'{\"slurm_partition\": \"gpu\", \"gpus_per_node\": 1}'.") from e
    if not isinstance(value, dict):
        raise SweepError(f"--cluster_args must be a JSON object of submitit parameters; got {text!r}.")
    return value
