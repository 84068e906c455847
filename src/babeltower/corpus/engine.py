"""Running datatrove stages on an executor: the part ``corpus build`` and ``corpus pack`` share.

A build or a pack is a dict of named stages (each a list of datatrove pipeline steps),
run in order. ``run_stages`` owns where and how: datatrove's ``LocalPipelineExecutor``
(the default: embedded, no server), a Ray cluster, or a chain of Slurm job arrays.
Every stage's tasks leave datatrove completion markers under ``WORK/logs/<stage>``, so
running the same command again after an interruption skips the finished tasks
(``prepare_work`` keeps the work dir only for the same build: same fingerprint).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from babeltower.corpus.config import EngineConfig
from babeltower.errors import BabelError
from babeltower.io import atomic_write_json


_CHILDREN_IGNORE_SIGINT = {"on": False}


def _child_ignores_sigint() -> None:
    if _CHILDREN_IGNORE_SIGINT["on"]:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)


# Every process a local stage forks (datatrove's pool workers) ignores SIGINT from its
# first instruction, not only once its task starts: a worker interrupted while it waits
# for work can die holding the pool's task-queue lock, and the driver's Pool.terminate()
# then waits for that lock forever (multiprocessing's known Ctrl-C hang; one SIGINT test
# of corpus build once hung for its 300 s timeout, not reproduced in 25 more). The
# driver alone answers a Ctrl-C; terminating the pool ends the workers.
os.register_at_fork(after_in_child=_child_ignores_sigint)


def ignore_sigint_in_pool_worker() -> None:
    """In a local executor's pool worker: Ctrl-C reaches the whole process group, and the
    driver answers it (one line, exit 130, the pool ended); a worker printing its own
    KeyboardInterrupt traceback would bury that line. Slurm/Ray tasks are main processes
    and keep their signals."""
    import signal

    import multiprocess

    if multiprocess.current_process().name != "MainProcess":
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def resolve_engine(engine: EngineConfig | None) -> EngineConfig:
    """``tasks: 0`` means one task per core of this machine (local); Slurm and Ray need
    the number said, since the cluster's size is not this machine's."""
    engine = engine or EngineConfig()
    if engine.tasks:
        return engine
    if engine.executor != "local":
        raise BabelError(f"executor '{engine.executor}' needs the number of tasks "
                         "(--tasks N or 'tasks:' in the engine config)")
    return engine.model_copy(update={"tasks": os.cpu_count() or 1})


def datatrove_version() -> str:
    from importlib.metadata import version

    return version("datatrove")


def work_dir_of(out: Path, engine: EngineConfig, kind: str = "datatrove") -> Path:
    """Stage outputs and completion markers: ``engine.work_dir`` or ``.<out>.<kind>``
    next to the output."""
    return Path(engine.work_dir) if engine.work_dir else out.parent / f".{out.name}.{kind}"


def prepare_work(work: Path, fingerprint: dict, last_stage: str) -> None:
    """Reuse the work dir of the same job (resume); start afresh for any other one or
    after a finished one."""
    meta = work / "build.json"
    if work.exists():
        same = False
        with contextlib.suppress(OSError, json.JSONDecodeError):
            same = json.loads(meta.read_text()) == fingerprint
        finished = (work / "logs" / last_stage / "completions" / "00000").exists()
        if not same or finished:
            shutil.rmtree(work)
    if not work.exists():
        work.mkdir(parents=True)
        atomic_write_json(meta, fingerprint)


def written_before(out: Path, work: Path, fingerprint: dict) -> bool:
    """True when ``out`` is this very job's output and only its work dir is left: the last
    stage renamed ``out`` into place and was killed before datatrove marked it complete.
    The work dir is removed then (the output records the job's fingerprint hash in its
    manifest's ``engine.work_sha256``)."""
    from babeltower.io import sha256_json

    if not (work.is_dir() and (out / "manifest.json").is_file()):
        return False
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
        manifest = json.loads((out / "manifest.json").read_text())
        if manifest.get("engine", {}).get("work_sha256") == sha256_json(fingerprint):
            shutil.rmtree(work, ignore_errors=True)
            return True
    return False


def run_stages(pipelines: dict, engine: EngineConfig, work: Path, what: str,
               single: tuple[str, ...] = (), progress: bool = True,
               timings: dict | None = None) -> bool:
    """Run ``pipelines`` (stage name -> steps) in order; stages named in ``single`` run as
    one task, the others as ``engine.tasks``. Returns True when the stages have run
    (local, Ray), False when they were submitted (Slurm). ``timings`` receives each
    stage's wall time in seconds."""
    if engine.executor == "slurm":
        _submit_slurm(pipelines, engine, work, single)
        return False
    with _datatrove_logs(progress):
        if engine.executor == "local":
            _run_local(pipelines, engine, work, what, single, progress, timings)
        else:
            _run_ray(pipelines, engine, work, what, single, progress, timings)
    return True


def run_job(pipelines: dict, engine: EngineConfig, work: Path, out: Path, what: str,
            single: tuple[str, ...], progress: bool = True,
            timings: dict | None = None) -> Path:
    """``run_stages``, then what a build and a pack both owe their work dir: removed once
    ``out`` is written; kept after an interruption (a Ctrl-C, or any failure after one),
    so the same command resumes; removed after any other failure - bad input or a full
    disk fail the same way again, and the work dir is as large as the output."""
    from babeltower.interrupts import requested

    try:
        ran = run_stages(pipelines, engine, work, what, single=single, progress=progress,
                         timings=timings)
    except Exception:
        if not requested():
            shutil.rmtree(work, ignore_errors=True)
        raise
    if not ran:
        return out   # Slurm: submitted
    if not out.exists():
        raise BabelError(f"the {what} finished without writing {out} "
                         f"(task logs: {work / 'logs'})")
    shutil.rmtree(work, ignore_errors=True)
    return out


def _tasks(stage: str, engine: EngineConfig, single: tuple[str, ...]) -> int:
    return 1 if stage in single else engine.tasks


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _completions(progress: bool, what: str, stage: str, folder: Path, tasks: int, done: int):
    """While a stage runs: a line each time more of its tasks have finished (datatrove's
    completion markers), at most every 5 s - the progress of a long local build."""
    stop = threading.Event()

    def watch():
        seen = done
        while not stop.wait(5.0):
            with contextlib.suppress(OSError):
                now = sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0
                if now > seen:
                    seen = now
                    # os.write, not print: this thread runs while the stage forks its
                    # workers, and a child forked while it held the stderr lock would
                    # block on its own first print
                    os.write(2, f"{what}: stage {stage}: {now}/{tasks} task(s) done\n".encode())

    thread = threading.Thread(target=watch, daemon=True) if progress and tasks > 1 else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread:
            thread.join()


def _run_local(pipelines: dict, engine: EngineConfig, work: Path, what: str,
               single: tuple[str, ...], progress: bool, timings: dict | None) -> None:
    from datatrove.executor import LocalPipelineExecutor

    for stage, pipeline in pipelines.items():
        tasks = _tasks(stage, engine, single)
        workers = min(tasks, engine.workers or os.cpu_count() or 1)
        start = "fork" if sys.platform == "linux" else "spawn"
        logs = work / "logs" / stage
        executor = LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers,
                                         start_method=start, logging_dir=str(logs))
        done = tasks - len(executor.get_incomplete_ranks())
        _say(progress, f"{what}: stage {stage}: {tasks} task(s), {done} already done "
                       f"(resumed), on {workers} worker(s)" if done else
                       f"{what}: stage {stage}: {tasks} task(s) on {workers} worker(s)")
        t0 = time.perf_counter()
        _CHILDREN_IGNORE_SIGINT["on"] = True
        try:
            with _completions(progress, what, stage, logs / "completions", tasks, done):
                executor.run()
        finally:
            _CHILDREN_IGNORE_SIGINT["on"] = False
        if timings is not None:
            timings[stage] = time.perf_counter() - t0


def _run_ray(pipelines: dict, engine: EngineConfig, work: Path, what: str,
             single: tuple[str, ...], progress: bool, timings: dict | None) -> None:
    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError as e:
        raise BabelError("executor 'ray' needs Ray: pip install 'babeltower[ray]'") from e
    started = False
    if not ray.is_initialized():
        if engine.ray.address:
            ray.init(address=engine.ray.address, log_to_driver=False)
        else:  # a private local cluster, loopback only, for this job
            ray.init(num_cpus=min(engine.tasks, os.cpu_count() or 1), include_dashboard=False,
                     _node_ip_address="127.0.0.1", log_to_driver=False)
        started = True
    try:
        for stage, pipeline in pipelines.items():
            tasks = _tasks(stage, engine, single)
            _say(progress, f"{what}: stage {stage}: {tasks} Ray task(s)")
            t0 = time.perf_counter()
            RayPipelineExecutor(pipeline, tasks=tasks, cpus_per_task=engine.ray.cpus_per_task,
                                mem_per_cpu_gb=engine.ray.mem_per_cpu_gb,
                                logging_dir=str(work / "logs" / stage)).run()
            if timings is not None:
                timings[stage] = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()


def _submit_slurm(pipelines: dict, engine: EngineConfig, work: Path,
                  single: tuple[str, ...]) -> None:
    from datatrove.executor import SlurmPipelineExecutor

    s = engine.slurm
    activate = Path(sys.prefix) / "bin" / "activate"
    env = s.env_command or (f'source "{activate}"' if activate.is_file() else None)
    previous = None
    for stage, pipeline in pipelines.items():
        previous = SlurmPipelineExecutor(
            pipeline, tasks=_tasks(stage, engine, single), time=s.time, partition=s.partition,
            cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb,
            job_name=f"{s.job_name}-{stage}", env_command=env, sbatch_args=dict(s.sbatch_args),
            depends=previous, logging_dir=str(work / "logs" / stage),
            slurm_logs_folder=str(work / "logs" / stage / "slurm_logs"), qos=None,
            mail_type="NONE")
    previous.run()   # submits the chain, each stage afterok the previous


@contextlib.contextmanager
def _datatrove_logs(progress: bool):
    """datatrove's task logs go to their files in the work dir only; the console gets our
    own one-line progress, never a task's traceback (the error itself reaches the caller
    as an exception, and the CLI prints it as one line)."""
    import datatrove.executor.base as base
    from datatrove.utils.logging import setup_default_logger
    from loguru import logger

    sinks: dict[int, int] = {}
    fmt = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}"

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        # catch=False: a log write that fails (a full disk) raises, as any write of the
        # task does, instead of loguru printing its own traceback on the console
        sinks[id(logfile)] = logger.add(logfile, level="DEBUG", format=fmt, colorize=False,
                                        catch=False)
        logger.info(f"Launching pipeline for {rank=}")
        return logfile

    def close_task_logger(logfile):
        # always closed, even when its last write fails (a full disk): an open file would
        # keep the disk busy after the task's error has been reported
        try:
            logger.complete()
            with contextlib.suppress(ValueError, KeyError, OSError):
                logger.remove(sinks.pop(id(logfile)))
        finally:
            with contextlib.suppress(OSError):
                logfile.close()

    saved = base.add_task_logger, base.close_task_logger
    logger.remove()
    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger
    try:
        yield
    finally:
        base.add_task_logger, base.close_task_logger = saved
        setup_default_logger()
