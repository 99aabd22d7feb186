"""Layers that act on each point's features alone: normalisation over the batch, activations, dropout."""

from torch import nn

from torchsparse.nn import functional as F
from torchsparse.tensor import SparseTensor

__all__ = ["BatchNorm", "Dropout", "GroupNorm", "LeakyReLU", "ReLU", "SiLU"]


class _OnFeatures:
    """Applies the torch.nn layer it is mixed into to the (N, C) features, keeping the sites."""

    def forward(self, input: SparseTensor) -> SparseTensor:
        return input.replace(super().forward(input.feats))  # type: ignore[misc]


class BatchNorm(_OnFeatures, nn.BatchNorm1d):
    """nn.BatchNorm1d over all points (state-dict keys as TorchSparse's)."""


class ReLU(_OnFeatures, nn.ReLU):
    """nn.ReLU on the features."""


class LeakyReLU(_OnFeatures, nn.LeakyReLU):
    """nn.LeakyReLU on the features."""


class SiLU(_OnFeatures, nn.SiLU):
    """nn.SiLU on the features."""


class Dropout(_OnFeatures, nn.Dropout):
    """nn.Dropout on the features."""


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm with statistics per sample (over the sample's points and each group's channels)."""

    def forward(self, input: SparseTensor) -> SparseTensor:
        batch = input.coords[:, 0].long()
        return input.replace(
            F.group_norm(input.feats, batch, input.num_samples, self.num_groups, self.weight, self.bias, self.eps)
        )
