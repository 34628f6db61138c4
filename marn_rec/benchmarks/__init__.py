"""Training throughput of MARN, sharded (DistributedModelParallel) against an unsharded baseline,
and APGRU against ``torch.nn.GRU``; ``benchmarks/qps.py`` and ``benchmarks/apgru.py`` are thin
command lines over :mod:`marn_rec.benchmarks.cli`.

What is measured (all in one run, side by side):

* **baseline**: ``MARNTrain(MARN(cfg))`` in one process, the TorchRec collections left unsharded
  with ``.sparse = True`` on their ``nn.EmbeddingBag`` / ``nn.Embedding`` modules and
  ``torch.optim.Adagrad`` (sparse gradients) for them, ``torch.optim.Adagrad`` for the dense
  parameters, lr 0.1.
* **sharded**: the same model under DistributedModelParallel over ``world_size`` processes (gloo
  on CPU, NCCL on GPU), FBGEMM's fused table-batched kernels with the fused row-wise AdaGrad
  (:func:`marn_rec.training.sharding.apply_embedding_optimizer`,
  :func:`~marn_rec.training.sharding.shard_model`,
  :func:`~marn_rec.training.sharding.training_optimizer`), one run per sharding type. Table-wise
  and row-wise plans come from TorchRec's planner restricted to that type; the column-wise plan
  splits every table into ``world_size`` equal column blocks (TorchRec's ``column_wise``
  generator), because the planner keeps 32-d tables whole (its column shards are at least 128
  wide by default).

Every run is a fresh set of processes (peak memory is per run), all on the same pre-generated
batches (data generation is timed separately, in the parent). Each process uses the same
per-process batch; rank ``r`` starts ``r`` batches into the shared pool.

Speed and scale adds: sharded runs stepped by TorchRec's ``TrainPipelineSparseDist`` (and, with
``--interleave-pipeline``, timed against a plain-loop twin in interleaved windows), fp16 tables
(``--table-dtype``), a memory cap (``--memory-budget-gib``), the compute floor of a step (``floor``:
FLOPs per component, GEMM rate, time / floor) and the fast step against the old one
(``--fast-step``: bf16 autocast, fused dense AdaGrad and the modules' kernels of 2026-12-02 against
the step of 2026-12-01, interleaved windows).

Modules: ``config`` (modes, options, one run), ``machine`` (machine facts, RSS readings),
``plans`` (sharding plans, embedding bytes per rank), ``memory`` (peak prediction against the
memory free), ``profiling`` (step time by bucket), ``floor`` (the compute floor), ``measure`` (one
run in one process), ``launcher`` (spawned processes), ``qps`` (the sweep), ``goals`` (the issues'
ratios), ``report`` (markdown, PNG, files), ``apgru`` (APGRU vs nn.GRU), ``cli``; library chatter
is kept out by :mod:`marn_rec.quiet`.
"""
