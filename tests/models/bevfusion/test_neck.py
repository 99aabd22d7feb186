import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchsparse.models.bevfusion.neck import GeneralizedLSSFPN
from torchsparse.testing.bevfusion import official_dump, official_keys

DUMP = official_dump()
PREFIX = "encoders.camera.neck."
SWIN_T_OUTPUTS = [(192, 32, 88), (384, 16, 44), (768, 8, 22)]  # Swin-T on 256 x 704 images


def test_keys_shapes_and_order_equal_the_release():
    model = GeneralizedLSSFPN()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == official_keys(PREFIX)
    assert sum(p.numel() for p in model.parameters()) == DUMP["prefix_param_counts"][PREFIX[:-1]]
    buffers = [PREFIX + k for k, _ in model.named_buffers()]
    assert buffers == [k for k in DUMP["buffers_and_nontrainable"] if k.startswith(PREFIX)]
    for name, value in model.state_dict().items():
        assert str(value.dtype).removeprefix("torch.") == DUMP["dtypes"].get(PREFIX + name, "float32"), name
    state = {k: torch.randn(v) if v else torch.tensor(7) for k, v in official_keys(PREFIX)}
    model.load_state_dict(state, strict=True)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert (module.eps, module.momentum) == (1e-5, 0.1)
        if isinstance(module, nn.Conv2d):
            assert module.bias is None


def test_output_on_swin_t_shapes(device):
    torch.manual_seed(0)
    model = GeneralizedLSSFPN().to(device).eval()
    inputs = [torch.randn(2, *shape, device=device) for shape in SWIN_T_OUTPUTS]
    with torch.no_grad():
        outs = model(inputs)
    assert [tuple(o.shape) for o in outs] == [(2, 256, 32, 88), (2, 256, 16, 44)]
    assert all((o >= 0).all() for o in outs)  # ends in ReLU


def _naive_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """align_corners=False: output pixel i samples the input at (i + 0.5) * in / out - 0.5, clamped at 0."""

    def weights(n_in: int, n_out: int) -> Tensor:
        m = torch.zeros(n_out, n_in, dtype=x.dtype)
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            lo = min(math.floor(src), n_in - 1)
            hi = min(lo + 1, n_in - 1)
            m[i, lo] += 1 - (src - lo)
            m[i, hi] += src - lo
        return m.to(x.device)

    return torch.einsum("oh,bchw,pw->bcop", weights(x.shape[2], size[0]), x, weights(x.shape[3], size[1]))


def _naive_conv_bn_relu(module, x: Tensor) -> Tensor:
    y = F.conv2d(x, module.conv.weight, padding=module.conv.padding)
    bn = module.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return torch.relu((y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None])


def test_forward_equals_naive_top_down_concatenation(device):
    torch.manual_seed(0)
    channels, out_channels = (6, 10, 14), 8
    model = GeneralizedLSSFPN(channels, out_channels).to(device=device, dtype=torch.float64).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    assert [m.conv.in_channels for m in model.lateral_convs] == [6 + 8, 10 + 14]
    sizes = [(9, 13), (5, 7), (3, 4)]  # not exact halves: the upsampling targets the finer map's size
    inputs = [torch.randn(2, c, *hw, dtype=torch.float64, device=device) for c, hw in zip(channels, sizes)]
    with torch.no_grad():
        outs = model(inputs)
        top = inputs[2]
        expected = []
        for i in (1, 0):
            x = torch.cat([inputs[i], _naive_bilinear(top, sizes[i])], dim=1)
            top = _naive_conv_bn_relu(model.fpn_convs[i], _naive_conv_bn_relu(model.lateral_convs[i], x))
            expected.insert(0, top)
    assert len(outs) == 2
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_rejects_wrong_inputs():
    model = GeneralizedLSSFPN()
    with pytest.raises(ValueError, match="inputs must be"):
        model([torch.randn(1, c, h, w) for c, h, w in SWIN_T_OUTPUTS[:2]])
    with pytest.raises(ValueError, match="inputs must be"):
        model([torch.randn(1, c + 1, h, w) for c, h, w in SWIN_T_OUTPUTS])
    with pytest.raises(ValueError, match="at least 2"):
        GeneralizedLSSFPN((192,))
