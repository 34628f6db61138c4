"""Image modality input (paper 3.1.1): the 4096-d output of VGG16 without its last two layers.

The vectors are precomputed once per item, offline, and fed to the model as a dense input. The
extraction loop takes any backbone module, so it is tested without torchvision; the VGG16 backbone
imports torchvision lazily (``pip install -e .[vision]``: PyPI has only CUDA builds of it, and it
fails to import next to the CPU torch).
"""

from typing import Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm


def vgg16_fc7(weights: str = "DEFAULT") -> nn.Module:
    """VGG16 up to fc7 (+ReLU): the classifier's last dropout and 1000-way layer removed.

    Args:
        weights: torchvision weights name ("DEFAULT" = ImageNet), or "none" for random weights
            (no download; tests and offline machines).
    """
    try:
        from torchvision.models import VGG16_Weights, vgg16
    except Exception as e:  # ImportError, or torchvision's own failure to load its ops
        raise ImportError(
            "the VGG16 extractor needs torchvision: pip install -e '.[vision]'"
        ) from e
    model = vgg16(weights=None if weights == "none" else VGG16_Weights[weights])
    # classifier = [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8]: keep through fc7's ReLU.
    model.classifier = nn.Sequential(*list(model.classifier.children())[:5])
    return model.eval()


@torch.no_grad()
def extract_image_features(
    backbone: nn.Module,
    images: Iterable[torch.Tensor],
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
) -> Iterator[torch.Tensor]:
    """Runs ``backbone`` in eval mode over batches of preprocessed images.

    Args:
        backbone: maps [n, 3, H, W] to [n, image_dim] (e.g. :func:`vgg16_fc7`).
        images: batches of images, already resized and normalised for the backbone.
        device: where to run.

    Yields:
        torch.Tensor: [n, image_dim] float32 features of each batch, on the CPU.

    Raises:
        ValueError: a batch is not [n, 3, H, W], or the backbone returns non-finite features.
    """
    backbone = backbone.to(device).eval()
    for i, batch in enumerate(tqdm(images, desc="image features", disable=not progress)):
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"images: batch {i} has shape {list(batch.shape)}, expected [n, 3, H, W]")
        out = backbone(batch.to(device)).flatten(1).float().cpu()
        if not torch.isfinite(out).all():
            raise ValueError(f"images: batch {i} gave non-finite features")
        yield out
