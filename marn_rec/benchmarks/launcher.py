"""Runs measurements in their own processes: one set of ``world_size`` spawned processes per call
(a process group over gloo on CPU, NCCL on GPU, for the sharded modes), specs and results passed
as JSON files, and a failed or killed rank reported as a RuntimeError rather than a hang."""

import datetime
import json
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, List

import torch

from marn_rec.benchmarks.config import BASELINE, QPSConfig, RunSpec
from marn_rec.benchmarks.measure import measure
from marn_rec.quiet import quiet_libraries
from marn_rec.training.allocator import keep_freed_memory


def worker(rank: int, world_size: int, port: int, specs_path: str, out_dir: str) -> None:
    """Entry point of every spawned process: runs each spec of ``specs_path`` in turn and writes
    ``result_<n>_rank<rank>.json`` into ``out_dir``."""
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
        try:
            for n, spec in enumerate(specs):
                result = measure(spec, cfg, rank, device, pg)
                with open(os.path.join(out_dir, f"result_{n}_rank{rank}.json"), "w") as f:
                    json.dump(result, f)
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
