"""Per-sample group normalisation of sparse features."""

from torch import Tensor

__all__ = ["group_norm"]


def group_norm(
    feats: Tensor, batch: Tensor, num_samples: int, num_groups: int, weight: Tensor | None, bias: Tensor | None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalisation with statistics per (sample, group) over all points of the sample.

    Args:
        feats: float (N, C), C divisible by num_groups.
        batch: int64 (N,) sample index of each row, in [0, num_samples).
        num_samples: number of samples B.
        num_groups: G.
        weight, bias: optional (C,) affine parameters.
        eps: added to the variance.

    Returns:
        float (N, C) normalised features.
    """
    n, c = feats.shape
    if c % num_groups:
        raise ValueError(f"channels {c} are not divisible by num_groups {num_groups}")
    grouped = feats.view(n, num_groups, c // num_groups)
    count = grouped.new_zeros(num_samples).index_add(0, batch, grouped.new_ones(n)) * (c // num_groups)
    count = count.clamp_min(1)[:, None]
    mean = grouped.new_zeros((num_samples, num_groups)).index_add(0, batch, grouped.sum(2)) / count
    centred = grouped - mean[batch][:, :, None]
    var = grouped.new_zeros((num_samples, num_groups)).index_add(0, batch, centred.square().sum(2)) / count
    out = (centred * (var[batch] + eps).rsqrt()[:, :, None]).view(n, c)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out
