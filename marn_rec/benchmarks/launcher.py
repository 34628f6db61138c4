"""Runs measurements in their own processes: one set of ``world_size`` spawned processes per call
(a process group over gloo on CPU, NCCL on GPU, for the sharded modes), specs and results passed
as JSON files, and a failed or killed rank reported as a RuntimeError rather than a hang.
:func:`launch_interleaved` runs the baseline process and a sharded set side by side, taking turns
window by window (:class:`Turns`), so that a drift of the machine's speed hits both alike."""

import datetime
import json
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

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


def launch(specs: List[RunSpec], cfg: QPSConfig, work_dir: str) -> List[List[Dict[str, Any]]]:
    """Runs ``specs`` (same mode, same world size) in one set of spawned processes.

    Returns, per spec, the per-rank results, or raises RuntimeError (a rank failed or was killed).
    """
    import torch.multiprocessing as mp

    from marn_rec.training.loop import free_port

    out_dir = tempfile.mkdtemp(dir=work_dir)
    specs_path = os.path.join(out_dir, "specs.json")
    with open(specs_path, "w") as f:
        json.dump({"config": asdict(cfg), "specs": [asdict(s) for s in specs]}, f)
    world = specs[0].world_size
    if not cfg.isolate and specs[0].mode == BASELINE:
        # In this process (``--quick``: saves a process start-up); threads restored afterwards.
        threads = torch.get_num_threads()
        try:
            worker(0, 1, 0, specs_path, out_dir)
        except Exception as e:
            raise RuntimeError(f"{type(e).__name__}: {e}") from e
        finally:
            torch.set_num_threads(threads)
        return read_results(out_dir, len(specs), world)
    context = mp.start_processes(
        worker,
        args=(world, free_port(), specs_path, out_dir),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + cfg.timeout_s * len(specs)
    try:
        while not context.join(timeout=2.0):
            if time.monotonic() > deadline:
                for proc in context.processes:  # our own children only
                    if proc.is_alive():
                        proc.terminate()
                for proc in context.processes:
                    proc.join(10)
                raise RuntimeError(f"timed out after {cfg.timeout_s * len(specs):.0f} s")
    except RuntimeError:
        raise
    except Exception as e:  # ProcessRaisedException / ProcessExitedException (e.g. OOM kill)
        text = str(e).strip()
        raise RuntimeError(f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}") from e
    return read_results(out_dir, len(specs), world)


def launch_interleaved(first: RunSpec, second: RunSpec, cfg: QPSConfig,
                       work_dir: str) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """``first`` and ``second`` (e.g. the baseline and a sharded run) in two sets of processes
    alive at once, their warm-ups and windows taking turns (:class:`Turns`): per set, the per-rank
    results. Raises RuntimeError if a process of either set fails or the pair times out."""
    import multiprocessing

    import torch.multiprocessing as mp

    from marn_rec.training.loop import free_port

    barrier = multiprocessing.get_context("spawn").Barrier(first.world_size + second.world_size)
    sets = []
    for spec, is_first in ((first, True), (second, False)):
        out_dir = tempfile.mkdtemp(dir=work_dir)
        specs_path = os.path.join(out_dir, "specs.json")
        with open(specs_path, "w") as f:
            json.dump({"config": asdict(cfg), "specs": [asdict(spec)]}, f)
        context = mp.start_processes(
            worker, args=(spec.world_size, free_port(), specs_path, out_dir, barrier, is_first),
            nprocs=spec.world_size, join=False, start_method="spawn",
        )
        sets.append((context, out_dir, spec.world_size))
    deadline = time.monotonic() + cfg.timeout_s
    pending = list(range(len(sets)))
    try:
        while pending:
            for k in list(pending):
                if sets[k][0].join(timeout=1.0):
                    pending.remove(k)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {cfg.timeout_s:.0f} s")
    except Exception as e:  # a process raised or died: stop the other set too
        for context, _, _ in sets:
            for proc in context.processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in context.processes:
                proc.join(10)
        if isinstance(e, RuntimeError) and str(e).startswith("timed out"):
            raise
        text = str(e).strip()
        raise RuntimeError(f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}") from e
    return tuple(read_results(out_dir, 1, world)[0] for _, out_dir, world in sets)  # type: ignore[return-value]


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
