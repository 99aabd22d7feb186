import pytest
import torch

import torchsparse.nn as spnn
import torchsparse.nn.functional as F
from torchsparse.testing import random_sparse_tensor


def _input(device, batch_size=3):
    return random_sparse_tensor(60, 6, extent=(6, 6, 6), batch_size=batch_size, dtype=torch.float64, device=device)


@pytest.mark.parametrize("layer,reference", [
    (spnn.ReLU(), torch.relu),
    (spnn.LeakyReLU(0.1), lambda f: torch.nn.functional.leaky_relu(f, 0.1)),
    (spnn.SiLU(), torch.nn.functional.silu),
])
def test_activations(layer, reference, device):
    x = _input(device)
    y = layer(x)
    assert y.coords is x.coords and torch.equal(y.feats, reference(x.feats))


def test_batchnorm_is_batchnorm1d(device):
    x = _input(device)
    bn = spnn.BatchNorm(6).double().to(device)
    ref = torch.nn.BatchNorm1d(6).double().to(device)
    assert set(bn.state_dict()) == set(ref.state_dict())
    assert torch.allclose(bn(x).feats, ref(x.feats))
    assert torch.allclose(bn.running_mean, ref.running_mean)


def test_dropout(device):
    x = _input(device)
    drop = spnn.Dropout(0.5).eval()
    assert torch.equal(drop(x).feats, x.feats)
    drop.train()
    assert bool((drop(x).feats == 0).any())


def test_group_norm_per_sample(device):
    x = _input(device)
    gn = spnn.GroupNorm(3, 6).double().to(device)
    torch.nn.init.normal_(gn.weight)
    torch.nn.init.normal_(gn.bias)
    y = gn(x)
    batch = x.coords[:, 0]
    for b in range(3):
        rows = batch == b
        ref = torch.nn.functional.group_norm(x.feats[rows].T[None], 3, gn.weight, gn.bias, gn.eps)[0].T
        assert (y.feats[rows] - ref).abs().max() <= 1e-10
    feats = x.feats.detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f: F.group_norm(f, batch.long(), 3, 3, gn.weight.detach(), gn.bias.detach()), (feats,)
    )


def test_group_norm_bad_groups(device):
    with pytest.raises(ValueError, match="num_groups"):
        F.group_norm(torch.zeros(4, 6), torch.zeros(4, dtype=torch.long), 1, 4, None, None)
