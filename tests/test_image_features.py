"""The image-feature extraction loop, with a stand-in backbone (torchvision is an optional extra)."""

import pytest
import torch
from torch import nn

from marn_rec.data.image_features import extract_image_features, vgg16_fc7


class _TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_extraction_is_the_backbone_in_eval_mode() -> None:
    backbone = _TinyBackbone().train()
    images = [torch.randn(5, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    out = list(extract_image_features(backbone, images, progress=False))
    assert [o.shape for o in out] == [(5, 4), (2, 4)]
    with torch.no_grad():
        expected = torch.relu(backbone.conv(images[0])).mean(dim=(2, 3))  # no dropout
    torch.testing.assert_close(out[0], expected)


def test_bad_images_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"batch 0 has shape \[5, 8, 8\]"):
        list(extract_image_features(_TinyBackbone(), [torch.randn(5, 8, 8)], progress=False))
    nan = torch.full((1, 3, 8, 8), float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        list(extract_image_features(_TinyBackbone(), [nan], progress=False))


def test_vgg16_fc7_gives_4096_features_when_torchvision_is_there() -> None:
    try:
        model = vgg16_fc7(weights="none")
    except ImportError as e:
        assert "pip install -e '.[vision]'" in str(e)
        pytest.skip("torchvision not installed (optional extra)")
    out = next(extract_image_features(model, [torch.randn(1, 3, 224, 224)], progress=False))
    assert out.shape == (1, 4096)
