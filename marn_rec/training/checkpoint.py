"""Distributed checkpoints: sharded tables, fused and dense optimizer state, loader state, step.

Model and optimizer go through ``torch.distributed.checkpoint`` (each rank writes its own shards;
resharding on load is DCP's). The loader state is per rank (each rank reads its own shard of the
stream), so every rank also writes ``loader_rank{r}.pt``. A checkpoint directory holds::

    .metadata, __{r}_{i}.distcp   DCP: model, optimizer and the step (a tensor)
    loader_rank{r}.pt             rank r's loader position, the step and the rank
    meta.json                     step, world size, the run's configuration (rank 0)
    manifest.json                 size and sha256 of every file above (rank 0, after all wrote)
    COMPLETE                      sha256 of manifest.json, written last

A directory without ``COMPLETE`` was interrupted while being written and is never loaded. Before
anything is loaded every file is checked against the manifest (each rank hashes a share), and the
step is read from meta.json, the directory name, the DCP state and the loader files, which must all
agree: a flipped bit, a truncated or deleted file or an edited ``meta.json`` is a
:class:`CheckpointError`, on every rank at once (no rank is left waiting in a collective).

The loader state is restorable into a loader with another number of workers when the loader's only
state is its position (map-style dataset, non-stateful sampler: the project's loaders), see
:mod:`marn_rec.training.loader_state`. What the run must agree with: :mod:`marn_rec.training.run_meta`.
"""

import hashlib
import io
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple, Type

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torchdata.stateful_dataloader import StatefulDataLoader

from marn_rec.training.loader_state import LoaderStateError, restore_loader
from marn_rec.training.run_meta import differences

COMPLETE = "COMPLETE"
META = "meta.json"
MANIFEST = "manifest.json"
FORMAT = 2  # 1: no manifest, no step in the state (before checksums)
RESUME_MODES = ("auto", "required", "never")
_PREFIX = "step_"
_STEP_KEY = "step"
_INTERNAL_META = ("step", "world_size", "format")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: damaged, incomplete or of another run."""


def checkpoint_dir(root: str, step: int) -> str:
    return os.path.join(root, f"{_PREFIX}{step:09d}")


def _step_dirs(root: str) -> Dict[int, str]:
    """Step -> directory of every ``step_*`` directory under ``root``, complete or not."""
    if not os.path.isdir(root):
        return {}
    found = {}
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(_PREFIX) and os.path.isdir(path):
            try:
                found[int(name[len(_PREFIX) :])] = path
            except ValueError:
                continue
    return found


def complete_checkpoints(root: str) -> Dict[int, str]:
    """Step -> directory of every complete checkpoint under ``root``."""
    return {s: p for s, p in _step_dirs(root).items() if os.path.exists(os.path.join(p, COMPLETE))}


def incomplete_checkpoints(root: str) -> Dict[int, str]:
    """Step -> directory of every checkpoint under ``root`` without its ``COMPLETE`` marker."""
    return {s: p for s, p in _step_dirs(root).items() if not os.path.exists(os.path.join(p, COMPLETE))}


def latest_checkpoint(root: str) -> Optional[str]:
    found = complete_checkpoints(root)
    return found[max(found)] if found else None


def _rank_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _agree(error: Optional[str], exc: Type[Exception] = CheckpointError) -> None:
    """Collective: raises ``exc`` on every rank if any rank has an ``error`` (rank-tagged)."""
    rank, world = _rank_world()
    errors: List[Optional[str]] = [error]
    if world > 1:
        errors = [None] * world
        dist.all_gather_object(errors, error)
    bad: Dict[str, List[int]] = {}
    for r, e in enumerate(errors):
        if e:
            bad.setdefault(e, []).append(r)
    if bad:
        if world == 1:
            raise exc(next(iter(bad)))
        raise exc("\n".join(f"(rank {','.join(map(str, rs))}) {e}" for e, rs in bad.items()))


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    rank, world = _rank_world()
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _write(path: str, data: bytes) -> None:
    """Durably writes ``path`` (a temporary file, fsync, rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _checkpoint_files(path: str) -> List[str]:
    """Every file of the checkpoint directory, relative, sorted; manifest and marker excluded."""
    out = []
    for base, _, names in os.walk(path):
        for name in names:
            rel = os.path.relpath(os.path.join(base, name), path)
            if rel not in (MANIFEST, COMPLETE) and ".tmp" not in name:
                out.append(rel)
    return sorted(out)


def _loader_file(rank: int) -> str:
    return f"loader_rank{rank}.pt"


# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    root: str,
    step: int,
    model: nn.Module,
    optimizer: Any,
    loader: StatefulDataLoader,
    meta: Dict[str, Any],
    keep: int = 2,
) -> str:
    """Writes the checkpoint of ``step`` under ``root`` (collective: every rank calls it).

    Args:
        meta: JSON-serialisable description of the run (configurations); checked on load.
        keep: complete checkpoints to keep; older ones (and incomplete ones of earlier steps) are
            removed after this one is complete.

    Raises:
        RuntimeError: writing failed on some rank (on every rank, with that rank's reason).
    """
    rank, world = _rank_world()
    path = checkpoint_dir(root, step)
    error = None
    if rank == 0:
        try:
            if os.path.exists(path):
                shutil.rmtree(path)  # a stale, incomplete write of the same step
            os.makedirs(path)
        except OSError as e:
            error = f"cannot create {path}: {e}"
    _agree(error, RuntimeError)
    state = {
        "model": model.state_dict(),
        "optim": optimizer.state_dict(),
        _STEP_KEY: torch.tensor(step, dtype=torch.int64),
    }
    dcp.save(state, checkpoint_id=path)
    try:
        buf = io.BytesIO()
        torch.save(
            {"format": FORMAT, "step": step, "rank": rank, "world_size": world,
             "loader": loader.state_dict()},
            buf,
        )
        _write(os.path.join(path, _loader_file(rank)), buf.getvalue())
    except Exception as e:  # noqa: BLE001 - reported on every rank by _agree
        error = f"cannot write {_loader_file(rank)} in {path}: {type(e).__name__}: {e}"
    _agree(error, RuntimeError)
    if rank == 0:
        try:
            record = {**meta, "step": step, "world_size": world, "format": FORMAT}
            _write(os.path.join(path, META), json.dumps(record, indent=1, sort_keys=True).encode())
        except (OSError, TypeError, ValueError) as e:
            error = f"cannot write {META} in {path}: {type(e).__name__}: {e}"
    _agree(error, RuntimeError)
    # Every file is written: each rank hashes a share of them, rank 0 writes the manifest.
    files = _broadcast(_checkpoint_files(path) if rank == 0 else None)
    digests: Dict[str, Dict[str, Any]] = {}
    try:
        for rel in files[rank::world]:
            full = os.path.join(path, rel)
            digests[rel] = {"bytes": os.path.getsize(full), "sha256": _sha256(full)}
    except OSError as e:
        error = f"cannot hash the checkpoint files in {path}: {e}"
    _agree(error, RuntimeError)
    if world > 1:
        parts: List[Optional[Dict[str, Any]]] = [None] * world
        dist.all_gather_object(parts, digests)
        digests = {k: v for part in parts for k, v in (part or {}).items()}
    if rank == 0:
        try:
            manifest = json.dumps({"format": FORMAT, "files": digests}, indent=1, sort_keys=True).encode()
            _write(os.path.join(path, MANIFEST), manifest)
            _fsync_dir(path)
            _write(os.path.join(path, COMPLETE), f"sha256 {hashlib.sha256(manifest).hexdigest()}\n".encode())
            _fsync_dir(path)
        except OSError as e:
            error = f"cannot complete {path}: {e}"
        if error is None:
            complete = sorted(complete_checkpoints(root))
            stale = complete[:-keep] if keep > 0 else []
            stale += [s for s in incomplete_checkpoints(root) if s < step]
            for old in stale:
                shutil.rmtree(checkpoint_dir(root, old), ignore_errors=True)
    _agree(error, RuntimeError)
    return path


def resume_point(root: str, resume: str = "auto") -> Optional[str]:
    """The checkpoint directory to resume from, or ``None`` to start afresh (collective: rank 0
    decides and every rank gets the same answer or the same error).

    Args:
        resume: ``"auto"``: the latest complete checkpoint; ``None`` when ``root`` holds no
            checkpoint directory at all. ``"required"``: the latest complete checkpoint.
            ``"never"``: ``None``.

    Raises:
        CheckpointError: ``"auto"`` and ``root`` holds only incomplete checkpoints (the first
            write was interrupted, or the ``COMPLETE`` markers were removed: starting afresh would
            silently throw away a run); ``"required"`` and no complete checkpoint; ``"never"`` and
            ``root`` holds complete checkpoints (of an earlier run, which a fresh run would mix
            with its own).
    """
    rank, _ = _rank_world()
    answer: Tuple[Optional[str], Optional[str]] = (None, None)
    if rank == 0:
        try:
            answer = (_resume_point(root, resume), None)
        except CheckpointError as e:
            answer = (None, str(e))
    path, error = _broadcast(answer)
    if error is not None:
        raise CheckpointError(error)
    return path


def _resume_point(root: str, resume: str) -> Optional[str]:
    if resume not in RESUME_MODES:
        raise CheckpointError(f"resume must be one of {RESUME_MODES}, got {resume!r}")
    complete, incomplete = complete_checkpoints(root), incomplete_checkpoints(root)
    names = ", ".join(os.path.basename(incomplete[s]) for s in sorted(incomplete))
    if resume == "never":
        if complete:
            raise CheckpointError(
                f"resume=never but {root} has checkpoints of an earlier run "
                f"(steps {sorted(complete)}): remove them or use another output directory"
            )
        return None
    if complete:
        return complete[max(complete)]
    if resume == "required":
        extra = f" (only incomplete ones: {names})" if incomplete else ""
        raise CheckpointError(f"resume=required but {root} has no complete checkpoint{extra}")
    if incomplete:
        raise CheckpointError(
            f"{root} holds only incomplete checkpoints ({names}: no {COMPLETE} marker): either the "
            f"first checkpoint was interrupted while being written or its markers were removed. "
            f"Starting afresh would discard that run: remove {root} or pass resume=never."
        )
    return None


def _read_manifest(path: str) -> Dict[str, Dict[str, Any]]:
    try:
        with open(os.path.join(path, COMPLETE)) as f:
            marker = f.read().split()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {COMPLETE}: {e}") from e
    if len(marker) != 2 or marker[0] != "sha256":
        raise CheckpointError(
            f"{path}: {COMPLETE} records no manifest checksum: written by an older version of "
            f"marn_rec (before checksums) or damaged; it cannot be verified. Remove it (or pass "
            f"resume=never with another output directory)."
        )
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: damaged checkpoint: cannot read {MANIFEST}: {e}") from e
    if hashlib.sha256(raw).hexdigest() != marker[1]:
        raise CheckpointError(
            f"{path}: damaged checkpoint: {MANIFEST} does not match the checksum in {COMPLETE}"
        )
    try:
        files = json.loads(raw)["files"]
        return {str(k): {"bytes": int(v["bytes"]), "sha256": str(v["sha256"])} for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint: unreadable {MANIFEST}: {e!r}") from e


def _file_problems(path: str, files: Dict[str, Dict[str, Any]], mine: List[str]) -> List[str]:
    problems = []
    for rel in mine:
        full, want = os.path.join(path, rel), files[rel]
        if not os.path.isfile(full):
            problems.append(f"{rel} is missing")
            continue
        size = os.path.getsize(full)
        if size != want["bytes"]:
            problems.append(f"{rel} has {size} bytes, {want['bytes']} when written")
        elif _sha256(full) != want["sha256"]:
            problems.append(f"{rel} differs from its sha256 when written")
    return problems


def verify_checkpoint(path: str) -> Dict[str, Any]:
    """Checks ``path`` against its manifest (collective: each rank hashes a share of the files);
    returns its ``meta.json``.

    Raises:
        CheckpointError: incomplete, unreadable, or any file missing, resized or changed since it
            was written (on every rank).
    """
    rank, world = _rank_world()
    error, saved, files = None, {}, {}
    try:
        if not os.path.exists(os.path.join(path, COMPLETE)):
            raise CheckpointError(f"{path}: incomplete checkpoint (no {COMPLETE} marker)")
        try:
            with open(os.path.join(path, META)) as f:
                saved = json.load(f)
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot read {META}: {e}") from e
        files = _read_manifest(path)
        need = [META, ".metadata"]
        absent = [n for n in need if n not in files]
        if absent:
            raise CheckpointError(f"{path}: damaged checkpoint: {MANIFEST} lists no {absent}")
    except CheckpointError as e:
        error = str(e)
    _agree(error)  # the same files on every rank: they agree, but none goes on alone
    problems = _file_problems(path, files, sorted(files)[rank::world])
    if problems:
        error = (
            f"{path}: damaged checkpoint ({len(problems)} file(s) changed since written): "
            + "; ".join(problems)
            + _older_hint(path)
        )
    _agree(error)
    return saved


def _older_hint(path: str) -> str:
    root = os.path.dirname(os.path.abspath(path))
    older = [p for p in complete_checkpoints(root).values() if os.path.abspath(p) != os.path.abspath(path)]
    if not older:
        return ""
    return (f". An older complete checkpoint exists ({os.path.basename(max(older))}): remove "
            f"{os.path.basename(path)} to resume from it")


def _dir_step(path: str) -> Optional[int]:
    name = os.path.basename(os.path.normpath(path))
    try:
        return int(name[len(_PREFIX) :]) if name.startswith(_PREFIX) else None
    except ValueError:
        return None


def _dcp_load(path: str, state: Dict[str, Any]) -> None:
    try:
        dcp.load(state, checkpoint_id=path)
    # DCP's CheckpointException derives from BaseException, not Exception.
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"{path}: damaged checkpoint: {type(e).__name__}: {e}") from e


def load_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: Any,
    loader: StatefulDataLoader,
    meta: Dict[str, Any],
    defaults: Optional[Dict[str, Any]] = None,
) -> int:
    """Restores the state saved by :func:`save_checkpoint` in ``path``; returns its step
    (collective: every rank calls it). ``meta`` must equal the checkpoint's, except for keys the
    checkpoint lacks whose value here is their entry in ``defaults`` (same shape as ``meta``, in
    JSON form: :func:`marn_rec.training.run_meta.meta_defaults`).

    Raises:
        CheckpointError: the checkpoint is incomplete or damaged (a file missing or changed since
            it was written, the steps recorded in its parts disagree), or was written by a run with
            another configuration or world size. Raised on every rank; nothing is silently
            re-initialised.
    """
    rank, world = _rank_world()
    saved = verify_checkpoint(path)
    error = None
    step = saved.get("step")
    if saved.get("format") != FORMAT:
        error = (f"{path}: written in checkpoint format {saved.get('format')!r}, this code reads "
                 f"format {FORMAT}")
    elif not isinstance(step, int) or isinstance(step, bool):
        error = f"{path}: damaged checkpoint: {META} records step {step!r}"
    elif _dir_step(path) not in (None, step):
        error = f"{path}: damaged checkpoint: {META} records step {step}, the directory name {_dir_step(path)}"
    else:
        checked = lambda d: {k: v for k, v in d.items() if k not in _INTERNAL_META}  # noqa: E731
        diffs = differences({"world_size": saved.get("world_size"), **checked(saved)},
                            {"world_size": world, **checked(json.loads(json.dumps(meta)))}, defaults)
        if diffs:
            error = f"{path} was written by a different run:\n  " + "\n  ".join(diffs)
    _agree(error)
    loader_saved: Dict[str, Any] = {}
    try:
        loader_saved = torch.load(os.path.join(path, _loader_file(rank)), weights_only=True)
        if (loader_saved.get("step"), loader_saved.get("rank")) != (step, rank):
            error = (
                f"{path}: damaged checkpoint: {_loader_file(rank)} is of step "
                f"{loader_saved.get('step')} and rank {loader_saved.get('rank')}, {META} of step {step}"
            )
    except Exception as e:  # noqa: BLE001 - reported on every rank by _agree
        error = f"{path}: damaged checkpoint: {_loader_file(rank)}: {type(e).__name__}: {e}"
    _agree(error)
    # The step first, alone: a disagreement is refused before the model is touched.
    saved_step = {_STEP_KEY: torch.tensor(-1, dtype=torch.int64)}
    _dcp_load(path, saved_step)
    if int(saved_step[_STEP_KEY]) != step:
        error = (f"{path}: damaged checkpoint: the model state is of step "
                 f"{int(saved_step[_STEP_KEY])}, {META} says {step}")
    _agree(error)
    state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
    _dcp_load(path, state)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        restore_loader(loader, loader_saved["loader"])
    except LoaderStateError as e:
        error = f"{path}: {e}"
    except Exception as e:  # noqa: BLE001 - reported on every rank by _agree
        error = f"{path}: cannot restore the saved state: {type(e).__name__}: {e}"
    _agree(error)
    return step
