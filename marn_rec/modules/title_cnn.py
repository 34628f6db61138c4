"""Title embedding (paper 3.1.1): Kim's CNN over word vectors, windows 2, 3, 4, max over time."""

from typing import Sequence

import torch
from torch import nn


class TitleCNN(nn.Module):
    """Kim (2014) sentence CNN: one Conv1d per window size, ReLU, max-pool over time, concatenated.

    Args:
        word_dim (int): size of a word vector.
        windows (Sequence[int]): n-gram window sizes (2, 3, 4 in the paper).
        filters (int): filters per window.
        device (torch.device | None): where the parameters live (meta for deferred init).

    Example::

        cnn = TitleCNN(word_dim=300, windows=(2, 3, 4), filters=100)
        out = cnn(torch.randn(8, 32, 300))  # [8, 300]
    """

    def __init__(
        self,
        word_dim: int,
        windows: Sequence[int],
        filters: int,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(word_dim, filters, kernel_size=w, device=device) for w in windows
        )
        self.output_dim: int = filters * len(windows)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """
        Args:
            words (torch.Tensor): [U, h, word_dim] word vectors, zero rows where a title is padded.

        Returns:
            torch.Tensor: [U, filters * len(windows)].
        """
        x = words.transpose(1, 2)  # Conv1d wants channels first.
        return torch.cat([torch.relu(conv(x)).amax(dim=2) for conv in self.convs], dim=1)
