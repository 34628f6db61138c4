"""Loader state in a worker-count-independent form.

torchdata's StatefulDataLoader saves a different layout for 0 workers (the iterator's state) and
for k > 0 workers (a snapshot: main-process state plus one state per worker), and refuses the
other layout. For a map-style dataset with a non-stateful sampler the whole state is the number
of batches yielded: the dataset and the fetchers have no state, and the sampler is fast-forwarded
by that number. Such a state is rewritten into the layout of the target worker count.
"""

from typing import Any, Dict, Optional, Tuple

from torchdata.stateful_dataloader import StatefulDataLoader


class LoaderStateError(ValueError):
    """A loader state that cannot be carried over to another number of workers."""


_SNAPSHOT = "_snapshot"
_MAIN = "_main_snapshot"
_WORKERS = "_worker_snapshots"
_SNAPSHOT_STEP = "_snapshot_step"
_SINCE = "_steps_since_snapshot"
_LAST_WORKER = "_last_yielded_worker_id"
_FINISHED = "_iterator_finished"
_STATELESS = ("_sampler_iter_state", "_index_sampler_state", "_IterableDataset_len_called", "_shared_seed")


def loader_workers(state: Dict[str, Any]) -> int:
    """Number of workers of the loader that produced ``state``."""
    if _SNAPSHOT in state:
        return int(state[_SNAPSHOT][_MAIN]["_num_workers"])
    return 0


def loader_position(state: Dict[str, Any]) -> Tuple[int, bool, Optional[str]]:
    """``(batches yielded, epoch finished, why the position is not the whole state or None)``."""
    try:
        if _SNAPSHOT in state:
            snap = state[_SNAPSHOT]
            main = snap[_MAIN]
            position = int(snap[_SNAPSHOT_STEP]) + int(state[_SINCE])
            dataset_states = [
                (w.get("dataset_state"), w.get("fetcher_state")) for w in snap[_WORKERS].values()
            ]
            sampler_yielded = int(main["_sampler_iter_yielded"])
            stateless = [main.get(k) for k in _STATELESS]
            at_snapshot = int(snap[_SNAPSHOT_STEP])
        else:
            position = int(state["_num_yielded"])
            dataset_states = [(state.get("dataset_state"), state.get("fetcher_state"))]
            sampler_yielded = int(state["_sampler_iter_yielded"])
            stateless = [state.get(k) for k in _STATELESS]
            at_snapshot = position
        finished = bool(state.get(_FINISHED, False))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return 0, False, f"its layout is not one this code knows (torchdata changed? {e!r})"
    if any(d is not None or f is not None for d, f in dataset_states):
        return position, finished, "the dataset or its fetcher has a state of its own"
    if any(v is not None for v in stateless):
        return position, finished, "the sampler (or an iterable dataset) has a state of its own"
    if sampler_yielded != at_snapshot:
        return position, finished, (
            f"the sampler yielded {sampler_yielded} indices for {at_snapshot} batches"
        )
    return position, finished, None


def loader_state_for(
    position: int, num_workers: int, finished: bool = False, base_seed: int = 0
) -> Dict[str, Any]:
    """The StatefulDataLoader state, in the layout of ``num_workers``, of a stateless map-style
    loader that has yielded ``position`` batches."""
    if num_workers == 0:
        return {
            "_index_sampler_state": None,
            "_sampler_iter_state": None,
            "_sampler_iter_yielded": position,
            "_num_yielded": position,
            "_IterableDataset_len_called": None,
            "_shared_seed": None,
            "fetcher_state": None,
            "dataset_state": None,
            _FINISHED: finished,
        }
    return {
        _SNAPSHOT: {
            _SNAPSHOT_STEP: position,
            # As if batch n (0-based) had come from worker n % num_workers (a fresh iterator's
            # order); which worker makes a batch does not change it (no dataset state).
            _LAST_WORKER: (position - 1) % num_workers,
            _MAIN: {
                "_num_workers": num_workers,
                "_sampler_iter_state": None,
                "_index_sampler_state": None,
                "_sampler_iter_yielded": position,
                "_IterableDataset_len_called": None,
                "_shared_seed": None,
                "_base_seed": base_seed,
            },
            _WORKERS: {
                f"worker_{i}": {"worker_id": i, "dataset_state": None, "fetcher_state": None}
                for i in range(num_workers)
            },
        },
        _SINCE: 0,
        _FINISHED: finished,
    }


def convert_loader_state(state: Dict[str, Any], num_workers: int) -> Dict[str, Any]:
    """``state`` in the layout of a loader with ``num_workers`` workers (``state`` itself when the
    counts agree).

    Raises:
        LoaderStateError: the worker counts differ and ``state`` holds more than a position.
    """
    saved = loader_workers(state)
    if saved == num_workers:
        return state
    position, finished, why_not = loader_position(state)
    if why_not is not None:
        raise LoaderStateError(
            f"the data loader state was saved with {saved} workers and this run has {num_workers}; "
            f"it cannot be carried over because {why_not}. Resume with --num-workers {saved}."
        )
    base_seed = int(state[_SNAPSHOT][_MAIN].get("_base_seed", 0)) if saved else 0
    return loader_state_for(position, num_workers, finished, base_seed)


def restore_loader(loader: StatefulDataLoader, state: Dict[str, Any]) -> None:
    """``loader.load_state_dict(state)``, also when ``state`` came from another worker count.

    Raises:
        LoaderStateError: the worker counts differ and ``state`` holds more than a position.
    """
    loader.load_state_dict(convert_loader_state(state, loader.num_workers))
