"""TorchRec's TrainPipelineSparseDist trains a sharded MARN exactly as the plain loop does.

The pipeline FX-traces MARNTrain to find the sharded collections whose inputs come straight from
the batch, and starts their input distribution one batch ahead. Both runs start from the same
weights on 2 gloo ranks and must give the same losses step by step; the schedule of eq. 10's
lambda (owned by MARNTrain) advances the same way in both.
"""

import os
from datetime import timedelta
from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed.test_utils.multi_process import run_multi_process_func
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from marn_rec import MARN, MARNTrain, tiny
from marn_rec.testing import RandomCatalog, random_batch
from marn_rec.training.sharding import (
    apply_embedding_optimizer,
    load_unsharded_state_dict,
    shard_model,
    training_optimizer,
)
from marn_rec.validation import validated_batches

pytestmark = pytest.mark.distributed

STEPS = 5
CPU = torch.device("cpu")


def _dmp(config, reference_state: Dict[str, torch.Tensor]):
    model = MARNTrain(MARN(config, device=torch.device("meta"), validate=False), total_steps=STEPS)
    apply_embedding_optimizer(model, lr=0.1)
    dmp = shard_model(model, CPU)
    load_unsharded_state_dict(dmp, reference_state)
    return dmp, training_optimizer(dmp, lr=0.1)


def _worker(rank: int, world_size: int) -> Dict[str, Any]:
    os.environ["LOCAL_WORLD_SIZE"] = str(world_size)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120))
    try:
        config = tiny()
        torch.manual_seed(0)
        reference = MARNTrain(MARN(config), total_steps=STEPS)
        state = reference.state_dict()
        catalog = RandomCatalog(config)
        batches = [random_batch(config, 8 - 2 * rank, seed=10 * s + rank, catalog=catalog) for s in range(STEPS)]

        dmp, opt = _dmp(config, state)
        plain: List[float] = []
        for batch in validated_batches(batches, config):
            loss, (detached, _, _) = dmp(batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            plain.append(float(detached))

        dmp, opt = _dmp(config, state)
        pipeline = TrainPipelineSparseDist(dmp, opt, CPU)
        it = validated_batches(batches, config)
        piped: List[float] = []
        for _ in range(STEPS):
            detached, _, _ = pipeline.progress(it)  # the pipeline returns the second element
            piped.append(float(detached))
        with pytest.raises(StopIteration):
            pipeline.progress(it)
        pipelined = [name for name, m in dmp.named_modules() if getattr(m, "is_pipelined", False)]
        return {"plain": plain, "piped": piped, "pipelined": pipelined, "step": int(dmp.module.step)}
    finally:
        dist.destroy_process_group()


def test_train_pipeline_sparse_dist_equals_the_plain_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")
    results = run_multi_process_func(_worker, multiprocessing_method="spawn", world_size=2)
    for r in results:
        # Every sharded collection's lookup was pipelined: its input comes straight from the batch.
        assert sorted(r["pipelined"]) == [
            "_dmp_wrapped_module.module.model.property_embedding.ebc",
            "_dmp_wrapped_module.module.model.tower.embedding.ebc",
            "_dmp_wrapped_module.module.model.tower.embedding.ec",
        ], r["pipelined"]
        assert r["step"] == STEPS
        torch.testing.assert_close(r["piped"], r["plain"], rtol=1e-6, atol=1e-6)
        assert r["plain"][0] != r["plain"][-1]  # it trains
