"""Runs measurements in their own processes: one set of ``world_size`` spawned processes per call
(a process group over gloo on CPU, NCCL on GPU, for the sharded modes), specs and results passed
as JSON files, and a failed or killed rank reported as a RuntimeError rather than a hang.
:func:`launch_interleaved` runs the baseline process and a sharded set side by side, taking turns
window by window (:class:`Turns`), so that a drift of the machine's speed hits both alike."""

import contextlib
import datetime
import json
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, Iterator, List, Tuple

import torch

from marn_rec.benchmarks.config import BASELINE, QPSConfig, RunSpec
from marn_rec.benchmarks.measure import measure
from marn_rec.quiet import quiet_libraries
from marn_rec.training.allocator import keep_freed_memory


class Turns:
    """Windows taken in turn by two sets of processes that share one barrier (all their processes
    are its parties). Per window every process waits three times: the ``first`` set runs between
    the first and second wait, the other set between the second and third; whoever is not running
    sleeps in the barrier (no CPU). A process that fails breaks the barrier, so the others stop
    at once instead of waiting out the timeout."""

    def __init__(self, barrier: Any, first: bool, timeout: float) -> None:
        self.barrier, self.first, self.timeout = barrier, first, timeout

    def _wait(self) -> None:
        self.barrier.wait(self.timeout)

    def before_window(self) -> None:
        self._wait()
        if not self.first:
            self._wait()

    def after_window(self) -> None:
        if self.first:
            self._wait()
        self._wait()

    @contextlib.contextmanager
    def window(self) -> Iterator[None]:
        """The block runs in this set's turn."""
        self.before_window()
        yield
        self.after_window()


def worker(rank: int, world_size: int, port: int, specs_path: str, out_dir: str,
           barrier: Any = None, first: bool = False) -> None:
    """Entry point of every spawned process: runs each spec of ``specs_path`` in turn and writes
    ``result_<n>_rank<rank>.json`` into ``out_dir``; with ``barrier``, its windows alternate with
    another set's (:class:`Turns`; ``first``: this set runs first)."""
    with open(specs_path) as f:
        payload = json.load(f)
    cfg = QPSConfig(**payload["config"])
    specs = [RunSpec(**s) for s in payload["specs"]]
    if cfg.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(specs[0].threads)
    device_type = cfg.resolved_device()
    pg = None
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    with quiet_libraries():
        if specs[0].mode != BASELINE:
            import torch.distributed as dist

            os.environ.update(
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
            )
            dist.init_process_group(
                "nccl" if device_type == "cuda" else "gloo",
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=cfg.timeout_s),
            )
            pg = dist.group.WORLD
        turns = Turns(barrier, first, cfg.timeout_s) if barrier is not None else None
        try:
            for n, spec in enumerate(specs):
                result = measure(spec, cfg, rank, device, pg, turns)
                with open(os.path.join(out_dir, f"result_{n}_rank{rank}.json"), "w") as f:
                    json.dump(result, f)
        except BaseException:
            if barrier is not None:
                barrier.abort()  # the other set stops now, not after the timeout
            raise
        finally:
            if pg is not None:
                import torch.distributed as dist

                dist.destroy_process_group()


def _write_specs(specs: List[RunSpec], cfg: QPSConfig, work_dir: str) -> Tuple[str, str]:
    """A new output folder under ``work_dir`` with ``specs`` written for :func:`worker` in it;
    (folder, specs file)."""
    out_dir = tempfile.mkdtemp(dir=work_dir)
    specs_path = os.path.join(out_dir, "specs.json")
    with open(specs_path, "w") as f:
        json.dump({"config": asdict(cfg), "specs": [asdict(s) for s in specs]}, f)
    return out_dir, specs_path


def _start(specs: List[RunSpec], cfg: QPSConfig, work_dir: str, *extra: Any) -> Tuple[Any, str]:
    """One spawned :func:`worker` per rank on ``specs`` (``extra``: the worker's trailing
    arguments); the processes' context and output folder."""
    import torch.multiprocessing as mp

    from marn_rec.training.loop import free_port

    out_dir, specs_path = _write_specs(specs, cfg, work_dir)
    world = specs[0].world_size
    context = mp.start_processes(
        worker, args=(world, free_port(), specs_path, out_dir, *extra), nprocs=world, join=False,
        start_method="spawn",
    )
    return context, out_dir


def _wait(contexts: List[Any], timeout_s: float) -> None:
    """Until every process of ``contexts`` has ended. A process that raised or died, or the
    timeout, terminates all of them (our own children only) and raises RuntimeError."""
    deadline = time.monotonic() + timeout_s
    pending = list(contexts)
    try:
        while pending:
            pending = [c for c in pending if not c.join(timeout=1.0)]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s")
    except Exception as e:  # also ProcessRaisedException / ProcessExitedException (e.g. OOM kill)
        for context in contexts:
            for proc in context.processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in context.processes:
                proc.join(10)
        if isinstance(e, TimeoutError):
            raise RuntimeError(str(e)) from e
        text = str(e).strip()
        raise RuntimeError(f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}") from e


def launch(specs: List[RunSpec], cfg: QPSConfig, work_dir: str) -> List[List[Dict[str, Any]]]:
    """Runs ``specs`` (same mode, same world size) in one set of spawned processes.

    Returns, per spec, the per-rank results, or raises RuntimeError (a rank failed or was killed).
    """
    world = specs[0].world_size
    if not cfg.isolate and specs[0].mode == BASELINE:
        # In this process (``--quick``: saves a process start-up); threads restored afterwards.
        out_dir, specs_path = _write_specs(specs, cfg, work_dir)
        threads = torch.get_num_threads()
        try:
            worker(0, 1, 0, specs_path, out_dir)
        except Exception as e:
            raise RuntimeError(f"{type(e).__name__}: {e}") from e
        finally:
            torch.set_num_threads(threads)
        return read_results(out_dir, len(specs), world)
    context, out_dir = _start(specs, cfg, work_dir)
    _wait([context], cfg.timeout_s * len(specs))
    return read_results(out_dir, len(specs), world)


def launch_interleaved(first: RunSpec, second: RunSpec, cfg: QPSConfig,
                       work_dir: str) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """``first`` and ``second`` (e.g. the baseline and a sharded run) in two sets of processes
    alive at once, their warm-ups and windows taking turns (:class:`Turns`): per set, the per-rank
    results. Raises RuntimeError if a process of either set fails or the pair times out."""
    import multiprocessing

    barrier = multiprocessing.get_context("spawn").Barrier(first.world_size + second.world_size)
    started = [_start([first], cfg, work_dir, barrier, True), _start([second], cfg, work_dir, barrier, False)]
    _wait([context for context, _ in started], cfg.timeout_s)
    first_out, second_out = (read_results(out_dir, 1, spec.world_size)[0]
                             for (_, out_dir), spec in zip(started, (first, second)))
    return first_out, second_out


def read_results(out_dir: str, num_specs: int, world: int) -> List[List[Dict[str, Any]]]:
    """The ``result_<n>_rank<r>.json`` files of :func:`worker`: per spec, per rank."""
    results = []
    for n in range(num_specs):
        per_rank = []
        for r in range(world):
            with open(os.path.join(out_dir, f"result_{n}_rank{r}.json")) as f:
                per_rank.append(json.load(f))
        results.append(per_rank)
    return results
