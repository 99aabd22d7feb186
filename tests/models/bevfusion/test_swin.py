import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchsparse.models.bevfusion.swin import PatchMerging, SwinBlockSequence, SwinTransformer
from torchsparse.testing.bevfusion import official_dump, official_keys

DUMP = official_dump()
PREFIX = "encoders.camera.backbone."


def test_keys_shapes_and_order_equal_the_release():
    model = SwinTransformer()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == official_keys(PREFIX)
    assert sum(p.numel() for p in model.parameters()) == DUMP["prefix_param_counts"][PREFIX[:-1]]
    buffers = [PREFIX + k for k, _ in model.named_buffers()]
    assert buffers == [k for k in DUMP["buffers_and_nontrainable"] if k.startswith(PREFIX)]
    for name, value in model.state_dict().items():
        assert str(value.dtype).removeprefix("torch.") == DUMP["dtypes"].get(PREFIX + name, "float32"), name
    state = {k: torch.randn(v) for k, v in official_keys(PREFIX) if not k.endswith("relative_position_index")}
    state |= {k: v for k, v in model.state_dict().items() if k.endswith("relative_position_index")}
    model.load_state_dict(state, strict=True)


def test_relative_position_index_is_swins():
    w = 7
    expected = torch.empty(w * w, w * w, dtype=torch.int64)
    for i in range(w * w):
        for j in range(w * w):
            (ri, ci), (rj, cj) = divmod(i, w), divmod(j, w)
            expected[i, j] = (ri - rj + w - 1) * (2 * w - 1) + (ci - cj + w - 1)
    # mmdet's construction: double_step_seq(2w - 1, w, 1, w), added to its transpose, flipped along dim 1.
    seq = (torch.arange(0, (2 * w - 1) * w, 2 * w - 1)[:, None] + torch.arange(w)[None, :]).reshape(1, -1)
    assert torch.equal((seq + seq.T).flip(1), expected)
    for name, index in SwinTransformer().named_buffers():
        assert name.endswith("attn.w_msa.relative_position_index")
        assert index.dtype == torch.int64
        assert torch.equal(index, expected)


def _naive_stage(stage: SwinBlockSequence, x: Tensor, hw: tuple[int, int], window: int) -> Tensor:
    """Every token attends, with full per-token attention, to the tokens of its own window.

    The windows of the zero-padded (Hp, Wp) map (padding after norm1, so padded tokens are keys and values
    too) are those of a grid offset by the shift s, without wrap-around: token (r, c) is in window
    (floor((r - s) / w), floor((c - s) / w)); the bias is indexed by the true (dr, dc) offset.
    """
    h, w_ = hw
    hp, wp = -(-h // window) * window, -(-w_ // window) * window
    rows, cols = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    rows, cols = rows.flatten().tolist(), cols.flatten().tolist()
    for block in stage.blocks:
        msa = block.attn.w_msa
        s = block.attn.shift_size
        heads, c = msa.num_heads, x.shape[-1]
        y = F.layer_norm(x, (c,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
        y = F.pad(y.view(-1, h, w_, c), (0, 0, 0, wp - w_, 0, hp - h)).reshape(-1, hp * wp, c)
        q, k, v = F.linear(y, msa.qkv.weight, msa.qkv.bias).view(-1, hp * wp, 3, heads, c // heads).unbind(2)
        out = torch.zeros(x.shape[0], h * w_, heads, c // heads, dtype=x.dtype, device=x.device)
        for i in range(hp * wp):
            if rows[i] >= h or cols[i] >= w_:
                continue
            ri, ci = rows[i], cols[i]
            keys = [
                j
                for j in range(hp * wp)
                if (rows[j] - s) // window == (ri - s) // window
                and (cols[j] - s) // window == (ci - s) // window
            ]
            bias = torch.stack(
                [
                    msa.relative_position_bias_table[
                        (ri - rows[j] + window - 1) * (2 * window - 1) + (ci - cols[j] + window - 1)
                    ]
                    for j in keys
                ]
            )  # (K, heads)
            logits = torch.einsum("bhd,bkhd->bkh", q[:, i] * msa.scale, k[:, keys]) + bias
            out[:, ri * w_ + ci] = torch.einsum("bkh,bkhd->bhd", logits.softmax(dim=1), v[:, keys])
        x = x + F.linear(out.flatten(2), msa.proj.weight, msa.proj.bias)
        y = F.layer_norm(x, (c,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
        fc1, fc2 = block.ffn.layers[0][0], block.ffn.layers[1]
        x = x + F.linear(F.gelu(F.linear(y, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    return x


@pytest.mark.parametrize("hw", [(9, 11), (7, 14), (3, 16), (15, 8)])
def test_shifted_window_attention_equals_naive_per_token_attention(device, hw):
    torch.manual_seed(0)
    window, c = 7, 12
    stage = SwinBlockSequence(c, num_heads=3, feedforward_channels=24, depth=2, window_size=window)
    stage = stage.to(device=device, dtype=torch.float64).eval()
    with torch.no_grad():
        for name, p in stage.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "weight" in name or "table" in name else 0.1))
    assert [b.attn.shift_size for b in stage.blocks] == [0, 3]
    x = torch.randn(2, hw[0] * hw[1], c, dtype=torch.float64, device=device)
    with torch.no_grad():
        out, out_hw, before, before_hw = stage(x, hw)
        expected = _naive_stage(stage, x, hw, window)
    assert out_hw == before_hw == hw
    assert out is before
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_patch_merging_uses_unfold_channel_order():
    # token (h, w), channel c holds 100 c + 10 h + w
    h, w, c = 2, 4, 2
    hh, ww, cc = torch.meshgrid(torch.arange(h), torch.arange(w), torch.arange(c), indexing="ij")
    x = (100 * cc + 10 * hh + ww).double().reshape(1, h * w, c)
    merged, hw = PatchMerging.merge(x, (h, w))
    assert hw == (1, 2)
    expected = torch.tensor(
        [[0, 1, 10, 11, 100, 101, 110, 111], [2, 3, 12, 13, 102, 103, 112, 113]], dtype=torch.float64
    )
    torch.testing.assert_close(merged[0], expected, rtol=0, atol=0)

    torch.manual_seed(0)
    h, w, c = 5, 7, 3  # odd sides: zero-padded at the bottom / right
    x = torch.randn(2, h * w, c, dtype=torch.float64)
    merging = PatchMerging(c, 5).double()
    out, hw = merging(x, (h, w))
    padded = F.pad(x.view(2, h, w, c).permute(0, 3, 1, 2), (0, 1, 0, 1))
    unfolded = nn.Unfold(2, stride=2)(padded).transpose(1, 2)  # (B, L, 4C)
    assert hw == (3, 4)
    torch.testing.assert_close(out, merging.reduction(merging.norm(unfolded)), rtol=1e-12, atol=1e-12)


def test_swin_t_output_shapes_on_bevfusion_images(device):
    torch.manual_seed(0)
    model = SwinTransformer().to(device).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 256, 704, device=device))
    assert [tuple(o.shape) for o in outs] == [(1, 192, 32, 88), (1, 384, 16, 44), (1, 768, 8, 22)]
    assert all(o.is_contiguous() and torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize(
    "size, expected",
    [
        ((64, 96), [(8, 12), (4, 6), (2, 3)]),
        ((61, 90), [(8, 12), (4, 6), (2, 3)]),
        ((30, 50), [(4, 7), (2, 4), (1, 2)]),
    ],
)
def test_non_multiple_sizes_are_padded(device, size, expected):
    torch.manual_seed(0)
    model = SwinTransformer(embed_dims=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)).to(device).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size, device=device))
    assert [tuple(o.shape) for o in outs] == [(2, 12 * 2**i, *hw) for i, hw in zip((1, 2, 3), expected)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_drop_path_is_off_in_eval_and_stochastic_in_training():
    torch.manual_seed(0)
    model = SwinTransformer(embed_dims=12, depths=(2, 2), num_heads=(1, 2), out_indices=(0, 1))
    rates = [b.attn.drop.drop_prob for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.0, 0.2 / 3, 0.4 / 3, 0.2])
    x = torch.randn(32, 3, 32, 32)  # 32 samples: some are dropped in a training pass
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    model.train()
    with torch.no_grad():
        c = model(x)
    assert not all(torch.allclose(u, v) for u, v in zip(a, c))


def test_rejects_wrong_input():
    model = SwinTransformer(embed_dims=12, depths=(2, 2), num_heads=(1, 2), out_indices=(1,))
    with pytest.raises(ValueError, match="x must be"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="out_indices"):
        SwinTransformer(out_indices=(4,))
