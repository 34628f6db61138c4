"""One measurement inside one process: build the baseline or the sharded model, time training
steps in windows, profile a few steps, read peak memory; and the batches every run shares.

The baseline is ``MARNTrain(MARN(cfg))`` with the TorchRec collections left unsharded,
``.sparse = True`` on their embedding modules and ``torch.optim.Adagrad`` (sparse gradients) for
them; the sharded model is DistributedModelParallel with FBGEMM's fused row-wise AdaGrad, stepped by a
plain loop or by TorchRec's ``TrainPipelineSparseDist`` (``spec.pipeline``). The baseline run that
``spec.floor`` marks also measures the compute floor (:mod:`marn_rec.benchmarks.floor`).
"""

import gc
import itertools
import statistics
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import nn

from marn_rec.benchmarks.config import BASELINE, QPSConfig, RunSpec, model_config
from marn_rec.benchmarks.machine import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from marn_rec.benchmarks.profiling import STEP_EVENT, bucket_times, profiler_events


def sparse_baseline(model: nn.Module, lr: float):
    """Sets ``.sparse = True`` on the embedding modules inside the unsharded TorchRec collections;
    AdaGrad (sparse) for them and AdaGrad for the rest. Returns (optimizers, table parameters)."""
    from marn_rec.training.sharding import ADAGRAD_EPS, ADAGRAD_INITIAL_ACCUMULATOR, embedding_tables

    tables: List[nn.Parameter] = []
    for _, collection in embedding_tables(model):
        for module in collection.modules():
            if isinstance(module, (nn.EmbeddingBag, nn.Embedding)):
                module.sparse = True
                tables += list(module.parameters())
    ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if id(p) not in ids]
    return [
        torch.optim.Adagrad(tables, lr=lr, eps=ADAGRAD_EPS, foreach=False),
        torch.optim.Adagrad(dense, lr=lr, initial_accumulator_value=ADAGRAD_INITIAL_ACCUMULATOR),
    ], tables


def use_old_step_kernels(model: nn.Module, on: bool) -> None:
    """Switches every module of ``model`` whose step changed since 2026-12-01 to its old kernels
    (``on``) or its current ones: the modules keep them behind ``old_step_kernels``."""
    for m in model.modules():
        if hasattr(m, "old_step_kernels"):
            m.old_step_kernels = on


def local_bytes(obj: Any) -> int:
    """Bytes of the local part of every (Sharded)Tensor inside ``obj`` (dicts, lists)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(obj, ShardedTensor):
        return sum(s.tensor.numel() * s.tensor.element_size() for s in obj.local_shards())
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "local_shards"):  # DTensor-like
            return sum(t.numel() * t.element_size() for t in obj.local_shards())
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(local_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(local_bytes(v) for v in obj)
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: RunSpec, cfg: QPSConfig, rank: int, device: torch.device, pg, turns=None) -> Dict[str, Any]:
    """One run in this process (rank ``rank`` of ``spec.world_size``): raw per-rank figures,
    summarised over the ranks by :func:`~marn_rec.benchmarks.qps.summarise`. ``turns``
    (:class:`~marn_rec.benchmarks.launcher.Turns`): the warm-up and every timed window wait for
    their turn, alternating with another set of processes (``qps.py --interleave-baseline``)."""
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile, record_function

    from marn_rec.models.marn import MARN, MARNTrain
    from marn_rec.training.sharding import apply_embedding_optimizer, shard_model, training_optimizer

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    peak_reset = reset_peak_rss()
    rss_start = current_rss_bytes()
    model_cfg = model_config(cfg.preset, spec.num_items, spec.table_dtype)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    out: Dict[str, Any] = {"rank": rank, "threads": torch.get_num_threads(), "peak_reset": peak_reset}
    # ``fast``: the fast step (bf16 autocast forward, fused dense AdaGrad) instead of the old one
    # (which also runs the modules' kernels of 2026-12-01: ``old_kernels`` below);
    # switched between timed windows when ``cfg.fast_step`` compares the two.
    fast = {"on": False}
    fast_step = cfg.fast_step_at(spec.num_items, spec.dedup)
    if spec.mode == BASELINE:
        model = MARNTrain(MARN(model_cfg, device=device))
        optimizers, tables = sparse_baseline(model, cfg.lr)
        out["emb_weights_bytes"] = sum(p.numel() * p.element_size() for p in tables)
        out["emb_optimizer_bytes"] = sum(local_bytes(optimizers[0].state[p]["sum"]) for p in tables)
        step_model = model
        fast_optimizers = optimizers
        if fast_step:
            fast_optimizers = [optimizers[0], _fused_like(optimizers[1])]

        def optimizer_step() -> None:
            for o in fast_optimizers if fast["on"] else optimizers:
                o.step()
            for o in optimizers:
                o.zero_grad(set_to_none=True)

    else:
        plan = torch.load(spec.plan_path, weights_only=False)
        model = MARNTrain(MARN(model_cfg, device=torch.device("meta")))
        apply_embedding_optimizer(model, lr=cfg.lr)
        dmp = shard_model(model, device, pg, plan=plan)
        old_optimizer = training_optimizer(dmp, lr=cfg.lr)
        fast_optimizer = training_optimizer(dmp, lr=cfg.lr, fused=True) if fast_step else old_optimizer
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        out["emb_weights_bytes"] = sum(
            local_bytes(v) for v in dmp.state_dict().values() if isinstance(v, ShardedTensor)
        )
        out["emb_optimizer_bytes"] = local_bytes(dmp.fused_optimizer.state_dict().get("state", {}))
        step_model = dmp

        class _Optimizer:  # the old or the fast one, as ``fast`` says (what the pipeline steps)
            def step(self) -> None:
                (fast_optimizer if fast["on"] else old_optimizer).step()

            def zero_grad(self, set_to_none: bool = True) -> None:
                (fast_optimizer if fast["on"] else old_optimizer).zero_grad(set_to_none=set_to_none)

        optimizer = _Optimizer()

        def optimizer_step() -> None:
            optimizer.step()
            optimizer.zero_grad()

    def model_forward(batch: Any) -> Any:
        if fast["on"] and cfg.fast_dtype == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return step_model(batch)
        return step_model(batch)

    out["build_s"] = time.perf_counter() - t0
    out["rss_after_build"] = current_rss_bytes()
    batches = [b.to(device) for b in torch.load(spec.batch_path, weights_only=False)]
    step_model.train()

    if spec.pipeline:
        if spec.mode == BASELINE:
            raise ValueError("the baseline is not pipelined (an unsharded model has no input distribution)")
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        # Step i trains batch i (as below); the pipeline reads two batches ahead of it.
        pipeline = TrainPipelineSparseDist(step_model, optimizer, device, custom_model_fwd=model_forward)
        feed = (batches[(j + rank) % len(batches)] for j in itertools.count())

        def step(i: int) -> None:
            pipeline.progress(feed)

        twin_step = None
        if cfg.interleave_pipeline:
            # A twin of the model in the same processes, trained by the plain loop on the same
            # batches: its windows interleave with the pipeline's (see _compare_pipeline).
            twin_model = MARNTrain(MARN(model_cfg, device=torch.device("meta")))
            apply_embedding_optimizer(twin_model, lr=cfg.lr)
            twin = shard_model(twin_model, device, pg, plan=plan)
            twin_optimizer = training_optimizer(twin, lr=cfg.lr)
            twin.train()

            def twin_step(i: int) -> None:
                loss, _ = twin(batches[(i + rank) % len(batches)])
                loss.backward()
                twin_optimizer.step()
                twin_optimizer.zero_grad()

    else:

        def step(i: int) -> None:
            loss, _ = model_forward(batches[(i + rank) % len(batches)])
            loss.backward()
            optimizer_step()

    def barrier() -> None:
        if pg is not None:
            dist.barrier(pg)

    in_turn = turns.window if turns is not None else nullcontext
    i = 0
    with in_turn():
        for _ in range(cfg.warmup_steps):
            step(i)
            i += 1
        _sync(device)
    barrier()
    window_s, cpu_s = [], []
    for _ in range(cfg.windows):
        with in_turn():
            _sync(device)
            t, c = time.perf_counter(), time.process_time()
            for _ in range(cfg.steps_per_window):
                step(i)
                i += 1
            _sync(device)
            window_s.append(time.perf_counter() - t)
            cpu_s.append(time.process_time() - c)
    out["window_s"] = window_s
    out["cpu_s"] = cpu_s  # CPU time of all this process's threads (gloo's included)
    barrier()

    if cfg.profile_steps > 0:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(cfg.profile_steps):
                with record_function(STEP_EVENT):
                    step(i)
                    _sync(device)
                i += 1
        events, step_total = profiler_events(prof, device_time=False)
        buckets = bucket_times(events)
        out["profile_ms_per_step"] = {k: v / 1e3 / cfg.profile_steps for k, v in buckets.items()}
        out["profile_step_ms"] = step_total / 1e3 / cfg.profile_steps
        if device.type == "cuda":
            dev_events, dev_total = profiler_events(prof, device_time=True)
            out["profile_device_ms_per_step"] = {
                k: v / 1e3 / cfg.profile_steps for k, v in bucket_times(dev_events).items()
            }
        del prof
        barrier()

    if spec.pipeline and twin_step is not None:
        out["vs_plain"] = _compare_pipeline(step, twin_step, i, cfg, device, barrier)
        i += (cfg.windows + 1) * cfg.steps_per_window

    if fast_step:
        def old_kernels(on: bool) -> None:
            use_old_step_kernels(step_model, on)

        out["fast_step"] = _compare_fast(step, i, fast, old_kernels, cfg, device, barrier)
        i += 2 * (cfg.windows + 1) * cfg.steps_per_window
        if spec.pipeline:
            pipeline.detach()  # the sharded modules' own forward, for the evaluation below
        out["fast_step"].update(_prediction_difference(step_model, batches[rank % len(batches)], device,
                                                       old_kernels, cfg.fast_dtype))
        out["fast_step"]["dtype"] = cfg.fast_dtype

    if spec.mode == BASELINE and cfg.tower_reps > 0:
        out["tower_ms"] = _tower_ms(model, batches, cfg.tower_reps, device)
    if spec.floor and spec.mode == BASELINE:
        from marn_rec.benchmarks.floor import measure_floor

        out["floor"] = measure_floor(model, batches, optimizer_step, device, cfg.floor_reps)
    out["peak_rss"] = peak_rss_bytes()
    out["rss_start"] = rss_start
    if device.type == "cuda":
        out["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    out["unique_items"] = statistics.mean(b.num_unique_items for b in batches)
    out["slots"] = statistics.mean(b.batch_size + b.history_index.numel() for b in batches)
    return out


def _fused_like(optimizer: torch.optim.Adagrad) -> torch.optim.Adagrad:
    """An AdaGrad over the same parameters with the same settings, fused kernel."""
    group = optimizer.param_groups[0]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return torch.optim.Adagrad(params, lr=group["lr"], eps=group["eps"],
                               initial_accumulator_value=group["initial_accumulator_value"], fused=True)


def _compare_fast(step, i: int, fast: Dict[str, bool], old_kernels: Callable[[bool], None], cfg: QPSConfig,
                  device: torch.device, barrier) -> Dict[str, Any]:
    """``cfg.windows`` pairs of timed windows, the old step and the fast one interleaved (their
    order alternating from pair to pair, so that a drift of the machine's load hits both alike),
    after a warm-up window of each. The two paths train the same weights in turn (timing only).
    The old step is that of 2026-12-01: fp32, AdaGrad's loop, and the modules' old kernels
    (``old_kernels(True)``: APGRU's step loop, amax pooling); the fast one runs under bf16 autocast
    with the fused AdaGrad and the modules' current kernels."""
    times: Dict[str, List[float]] = {"old": [], "fast": []}
    for pair in range(-1, cfg.windows):
        order = ("old", "fast") if pair % 2 == 0 else ("fast", "old")
        for name in order:
            fast["on"] = name == "fast"
            old_kernels(name == "old")
            _sync(device)
            barrier()
            t = time.perf_counter()
            for _ in range(cfg.steps_per_window):
                step(i)
                i += 1
            _sync(device)
            if pair >= 0:
                times[name].append(time.perf_counter() - t)
    fast["on"] = False
    old_kernels(False)
    barrier()
    return {"old_window_s": times["old"], "fast_window_s": times["fast"]}


def _compare_pipeline(step, plain_step, i: int, cfg: QPSConfig, device: torch.device, barrier) -> Dict[str, Any]:
    """``cfg.windows`` pairs of timed windows, the pipelined model (``step``) and its plain-loop
    twin (``plain_step``) interleaved, order alternating, after a warm-up window of each."""
    times: Dict[str, List[float]] = {"plain": [], "pipelined": []}
    j = i
    for pair in range(-1, cfg.windows):
        order = ("plain", "pipelined") if pair % 2 == 0 else ("pipelined", "plain")
        for name in order:
            _sync(device)
            barrier()
            t = time.perf_counter()
            for _ in range(cfg.steps_per_window):
                if name == "pipelined":
                    step(i)
                    i += 1
                else:
                    plain_step(j)
                    j += 1
            _sync(device)
            if pair >= 0:
                times[name].append(time.perf_counter() - t)
    barrier()
    return {"plain_window_s": times["plain"], "pipelined_window_s": times["pipelined"]}


@torch.no_grad()
def _prediction_difference(model: nn.Module, batch: Any, device: torch.device,
                           old_kernels: Callable[[bool], None], fast_dtype: str = "bf16") -> Dict[str, float]:
    """max and mean |p_fast - p_old| of the click probabilities of one batch, same weights, eval
    mode: the fast forward (current kernels, under bf16 autocast if ``fast_dtype`` is "bf16")
    against the old one (fp32, old kernels). The kernels agree in fp32 (tested; to 6e-8 in
    probability at initialisation on the small preset since the title CNN became a 2-D
    convolution), so under bf16 the difference is bf16's; its max over a batch is one sample's (up
    to 0.1 on trained weights), hence the mean beside it."""
    was = model.training
    model.eval()
    try:
        old_kernels(True)
        p_old = torch.sigmoid(model(batch)[1][1].float())
        old_kernels(False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast_dtype == "bf16"):
            p_fast = torch.sigmoid(model(batch)[1][1].float())
    finally:
        old_kernels(False)
        model.train(was)
    diff = (p_old - p_fast).abs()
    return {"max_abs_probability_difference": float(diff.max()),
            "mean_abs_probability_difference": float(diff.mean())}


def _tower_ms(model: nn.Module, batches: Sequence[Any], reps: int, device: torch.device) -> float:
    """Median ms of the item tower's forward + backward on one batch (no optimizer step)."""
    tower = model.model.tower
    times = []
    for _ in range(reps):
        for b in batches:
            slots = torch.cat([b.candidate_index, b.history_index])
            weights = torch.bincount(slots, minlength=b.num_unique_items).to(b.item_image.dtype)
            _sync(device)
            t = time.perf_counter()
            out = tower(b.item_sparse, b.item_title, b.item_image, weights)
            loss = out.representation.sum() + sum(out.losses.values())
            loss.backward()
            _sync(device)
            times.append((time.perf_counter() - t) * 1e3)
            model.zero_grad(set_to_none=True)
    return statistics.median(times)


def generate_batches(cfg: Any, num_items: int, dedup: bool, path: str) -> Dict[str, float]:
    """Pre-generates ``cfg.num_batches`` batches of the synthetic stream into ``path`` (``cfg``: a
    :class:`QPSConfig` or a ``FastStepConfig``; its preset, seed, batch size and batch count).

    Returns timings (catalog build, ms per batch) and the mean unique items and slots per batch.
    """
    from marn_rec.data import SyntheticTaobao, SyntheticTaobaoConfig

    data_cfg = SyntheticTaobaoConfig.from_model_config(
        model_config(cfg.preset, num_items), seed=cfg.seed, batch_size=cfg.batch_size,
        num_train_batches=cfg.num_batches,
    )
    t = time.perf_counter()
    source = SyntheticTaobao(data_cfg)
    catalog_s = time.perf_counter() - t
    t = time.perf_counter()
    batches = [source.batch("train", i, dedup=dedup) for i in range(cfg.num_batches)]
    per_batch_ms = (time.perf_counter() - t) * 1e3 / cfg.num_batches
    torch.save(batches, path)
    stats = {
        "catalog_s": catalog_s,
        "generate_ms_per_batch": per_batch_ms,
        "unique_items_per_batch": statistics.mean(b.num_unique_items for b in batches),
        "slots_per_batch": statistics.mean(b.batch_size + b.history_index.numel() for b in batches),
        "zipf_exponent": data_cfg.zipf_exponent,
    }
    del batches, source
    gc.collect()
    return stats
