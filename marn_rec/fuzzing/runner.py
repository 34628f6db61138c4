"""The runner: a case from its kind and seed (:func:`build_case`), the seeded plan of cases
(:func:`case_plan`), the worker that runs them and reports each before and after it runs, and
:func:`run_fuzz`, which starts workers and records a crash or hang against its case; the report
(:class:`FuzzReport`) and the command line (:func:`main`, run by ``python -m marn_rec.fuzzing``)."""

import argparse
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from marn_rec.config import MARNConfig, tiny
from marn_rec.fuzzing.cases import _SELFTEST_KINDS, KINDS, PASSES, Case, Ctx, KindFn
from marn_rec.fuzzing.harness import Harness
from marn_rec.testing import RandomCatalog

_MARK = "@@marn-fuzz "


# Self tests of the runner (not in the default kinds): it must see a crash, a hang and a silently
# accepted input.
def _selftest_abort(ctx: Ctx) -> Case:
    os.abort()


def _selftest_hang(ctx: Ctx) -> Case:
    time.sleep(3600)
    raise AssertionError("unreachable")


def _selftest_silent(ctx: Ctx) -> Case:
    return Case(ctx.batch(), valid=False)  # a valid batch claimed invalid: must be flagged


_SELFTEST_KINDS.update(
    _selftest_abort=_selftest_abort,
    _selftest_hang=_selftest_hang,
    _selftest_silent=_selftest_silent,
)


def kind_function(name: str) -> KindFn:
    return KINDS[name] if name in KINDS else _SELFTEST_KINDS[name]


def build_case(name: str, seed: int, config: Optional[MARNConfig] = None,
               catalog: Optional[RandomCatalog] = None) -> Case:
    """The case of kind ``name`` for ``seed`` (deterministic)."""
    config = config or tiny()
    torch.manual_seed(seed % (2**63))
    return kind_function(name)(Ctx(config, catalog or RandomCatalog(config), seed))


def case_plan(
    num_cases: int, seed: int, kinds: Optional[Sequence[str]] = None
) -> List[Tuple[str, int]]:
    """(kind, case seed) of every case: all kinds once (in a seeded order), then again..."""
    names = list(kinds) if kinds is not None else sorted(KINDS)
    order = list(names)
    random.Random(seed).shuffle(order)
    plan = []
    for i in range(num_cases):
        plan.append((order[i % len(order)], seed * 1_000_003 + i))
    return plan


@dataclass
class CaseResult:
    index: int
    kind: str
    outcome: str
    detail: str
    seconds: float

    @property
    def failed(self) -> bool:
        return self.outcome not in PASSES


@dataclass
class FuzzReport:
    results: List[CaseResult] = field(default_factory=list)
    workers: int = 0  # worker processes started (one more after each crash or hang)
    seconds: float = 0.0

    def counts(self) -> Dict[str, int]:
        return dict(Counter(r.outcome for r in self.results))

    def by_kind(self) -> Dict[str, Dict[str, int]]:
        out: Dict[str, Counter] = defaultdict(Counter)
        for r in self.results:
            out[r.kind][r.outcome] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    def failures(self) -> List[CaseResult]:
        return [r for r in self.results if r.failed]

    def summary(self, per_kind: bool = False) -> str:
        lines = [
            f"{len(self.results)} cases of {len({r.kind for r in self.results})} kinds in "
            f"{self.seconds:.1f} s ({self.workers} worker processes)",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items())),
        ]
        for r in self.failures()[:30]:
            lines.append(f"FAIL #{r.index} {r.kind}: {r.outcome}: {r.detail[:300]}")
        if per_kind:
            for k, counts in self.by_kind().items():
                lines.append(f"  {k}: " + ", ".join(f"{o} {n}" for o, n in sorted(counts.items())))
        return "\n".join(lines)


def _worker(seed: int, start: int, stop: int, kinds: Optional[List[str]], memory_gb: float) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    if memory_gb > 0:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    out = sys.stdout

    def emit(**event: Any) -> None:
        out.write(_MARK + json.dumps(event) + "\n")
        out.flush()

    harness = Harness()
    emit(event="ready")
    plan = case_plan(stop, seed, kinds)
    for index in range(start, stop):
        name, case_seed = plan[index]
        emit(event="start", index=index, kind=name)
        t0 = time.perf_counter()
        try:
            case = build_case(name, case_seed, harness.config, harness.catalog)
        except Exception as e:  # noqa: BLE001
            outcome, detail = "harness_error", f"{type(e).__name__}: {e}"
        else:
            outcome, detail = harness.run(case)
        emit(event="result", index=index, kind=name, outcome=outcome, detail=detail,
             seconds=time.perf_counter() - t0)


def run_fuzz(
    num_cases: int,
    seed: int = 0,
    kinds: Optional[Sequence[str]] = None,
    case_timeout: float = 120.0,
    start_timeout: float = 600.0,
    memory_gb: float = 4.0,
) -> FuzzReport:
    """Runs ``num_cases`` cases in worker processes; a crash or hang fails its case and a new
    worker takes over from the next one.

    Args:
        num_cases: cases to run (kind ``i % len(kinds)`` of a seeded order, so every kind runs once
            before any runs twice).
        seed: seed of the order and of every case.
        kinds: kind names (default: all of :data:`KINDS`).
        case_timeout: seconds a case may take before it counts as a hang.
        start_timeout: seconds a worker may take to import and build its model.
        memory_gb: address-space limit of a worker (0: none), so that a runaway allocation fails
            in the worker instead of exhausting the machine.
    """
    kinds = list(kinds) if kinds is not None else None
    plan = case_plan(num_cases, seed, kinds)
    report = FuzzReport()
    t_start = time.perf_counter()
    next_index = 0
    # The repository root: marn_rec/fuzzing/runner.py is three levels below it.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    while next_index < num_cases:
        cmd = [sys.executable, "-m", "marn_rec.fuzzing", "--worker", "--seed", str(seed),
               "--start", str(next_index), "--stop", str(num_cases), "--memory-gb", str(memory_gb)]
        if kinds is not None:
            cmd += ["--kinds", ",".join(kinds)]
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=root, env=env
            )
            report.workers += 1
            lines: "queue.Queue[Optional[str]]" = queue.Queue()

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            current: Optional[Tuple[int, str, float]] = None
            ready = False
            ended = False
            while not ended:
                timeout = case_timeout if ready else start_timeout
                try:
                    line = lines.get(timeout=timeout)
                except queue.Empty:
                    proc.kill()
                    proc.wait()
                    if current is None:
                        raise RuntimeError(f"fuzz worker did not start within {start_timeout} s")
                    index, name, t0 = current
                    report.results.append(CaseResult(
                        index, name, "hang", f"no result after {timeout} s",
                        time.perf_counter() - t0))
                    next_index = index + 1
                    break
                if line is None:  # the worker exited
                    code = proc.wait()
                    if current is not None:
                        index, name, t0 = current
                        err.seek(0)
                        tail = err.read()[-600:].strip().replace("\n", " | ")
                        report.results.append(CaseResult(
                            index, name, "crash", f"worker exited with {code}: {tail}",
                            time.perf_counter() - t0))
                        next_index = index + 1
                    elif not ready or next_index < num_cases:
                        err.seek(0)
                        raise RuntimeError(f"fuzz worker exited with {code} between cases: "
                                           f"{err.read()[-2000:]}")
                    ended = True
                    break
                if not line.startswith(_MARK):
                    continue
                event = json.loads(line[len(_MARK):])
                if event["event"] == "ready":
                    ready = True
                elif event["event"] == "start":
                    current = (event["index"], event["kind"], time.perf_counter())
                elif event["event"] == "result":
                    report.results.append(CaseResult(
                        event["index"], event["kind"], event["outcome"], event["detail"],
                        event["seconds"]))
                    current = None
                    next_index = event["index"] + 1
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report.seconds = time.perf_counter() - t_start
    assert [r.index for r in report.results] == list(range(num_cases)), "lost cases"
    assert [r.kind for r in report.results] == [k for k, _ in plan]
    return report


def main(argv: Optional[List[str]] = None) -> int:
    from marn_rec import fuzzing  # the package's docstring describes the command

    parser = argparse.ArgumentParser(prog="python -m marn_rec.fuzzing", description=fuzzing.__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=len(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=None, help="comma-separated kind names")
    parser.add_argument("--per-kind", action="store_true", help="print counts per kind")
    parser.add_argument("--json", default=None, help="write every case's result to this file")
    parser.add_argument("--memory-gb", type=float, default=4.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else None
    if args.worker:
        _worker(args.seed, args.start, args.stop, kinds, args.memory_gb)
        return 0
    report = run_fuzz(args.cases, args.seed, kinds, memory_gb=args.memory_gb)
    print(report.summary(per_kind=args.per_kind))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in report.results], f, indent=1)
    return 1 if report.failures() else 0
