"""``torch.export`` of MARN with dynamic batch size, item count and history length.

Every tensor input of :meth:`MARN.forward` (and every KJT's values and lengths) gets a dynamic
first dimension: B samples, U unique items, N behaviours, title words and ID values per batch all
vary. The padded history length T is ``config.behavior.max_length``, fixed in the graph (the model
pads to it; batches may hold any shorter histories). Exported graphs carry no input checks: run
:func:`marn_rec.validation.validate_batch` on batches before the program.
"""

from typing import Any, Dict

import torch
from torch.export import Dim, ExportedProgram, ShapesCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.batch import MARNBatch
from marn_rec.models.marn import MARN


def dynamic_shapes(model: MARN, inputs: Dict[str, Any]) -> Dict[str, Any]:
    """The ``dynamic_shapes`` of ``torch.export`` for :meth:`MARNBatch.model_inputs`: the first
    dimension of every tensor (and KJT values and lengths) is dynamic."""
    shapes = ShapesCollection()
    for value in inputs.values():
        if isinstance(value, KeyedJaggedTensor):
            shapes[value.values()] = (Dim.AUTO,)
            shapes[value.lengths()] = (Dim.AUTO,)
        elif isinstance(value, torch.Tensor):
            shapes[value] = (Dim.AUTO,) + (Dim.STATIC,) * (value.dim() - 1)
    return shapes.dynamic_shapes(model, (), inputs)


def export_marn(model: MARN, example: MARNBatch) -> ExportedProgram:
    """``torch.export`` of ``model`` (in eval mode) traced on ``example``'s inputs.

    Example::

        program = export_marn(MARN(tiny()).eval(), random_batch(tiny(), 8))
        logits = program.module()(**other_batch.model_inputs()).logits
    """
    if model.training:
        raise ValueError("export_marn: put the model in eval mode first (model.eval())")
    inputs = example.model_inputs()
    return torch.export.export(model, (), inputs, dynamic_shapes=dynamic_shapes(model, inputs), strict=False)
