"""Swin Transformer (the camera backbone of BEVFusion) in plain PyTorch, with mmdet's state-dict keys.

Layout and semantics follow mmdet 2.x ``mmdet/models/backbones/swin.py`` (WindowMSA, ShiftWindowMSA,
SwinBlock, SwinBlockSequence, SwinTransformer) and ``mmdet/models/utils/transformer.py`` (PatchEmbed,
PatchMerging with "corner" adaptive padding), as built by mit-han-lab/bevfusion db75150 from
configs/nuscenes/det/transfusion/secfpn/camera+lidar/swint_v0p075/default.yaml (docs/conventions.md §2):
Swin-T, out_indices (1, 2, 3) -> 192 / 384 / 768 channels at strides 8 / 16 / 32.

Two conventions matter for loading the released weights:

* PatchMerging concatenates each 2 x 2 patch in ``nn.Unfold(2, stride=2)`` order: output channel
  ``c * 4 + kh * 2 + kw`` holds input channel ``c`` at row offset ``kh``, column offset ``kw`` (the original
  Swin repository orders by offset first; mmdet's ``swin_converter`` permutes its weights into this order).
* Feature maps that are not window multiples are zero-padded at the bottom / right *after* ``norm1``; the
  padded tokens take part in attention as keys and values (only the shifted-window regions are masked, with
  -100 added to the logits, as the reference does).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PatchEmbed",
    "PatchMerging",
    "ShiftWindowMSA",
    "SwinBlock",
    "SwinBlockSequence",
    "SwinTransformer",
    "WindowMSA",
]

# Added to the attention logits between tokens of different shifted-window regions (the reference's value;
# not -inf, so a fully padded row can never produce NaN).
_MASK_VALUE = -100.0


def relative_position_index(window_size: int) -> Tensor:
    """Index into the relative-position bias table for every (query, key) pair of a window.

    Args:
        window_size: window side w.

    Returns:
        int64 (w*w, w*w): for tokens i = (ri, ci), j = (rj, cj) in row-major order,
        ``(ri - rj + w - 1) * (2w - 1) + (ci - cj + w - 1)``, in [0, (2w-1)^2).
    """
    coords = torch.arange(window_size)
    rows = coords.repeat_interleave(window_size)
    cols = coords.repeat(window_size)
    d_row = rows[:, None] - rows[None, :] + window_size - 1
    d_col = cols[:, None] - cols[None, :] + window_size - 1
    return (d_row * (2 * window_size - 1) + d_col).contiguous()


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of w -> (B * nW, w * w, C); windows row-major, batch-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, w * w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    nh, nw = height // window_size, width // window_size
    x = windows.view(-1, nh, nw, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window_size: int, shift_size: int, device=None) -> Tensor:
    """Additive attention mask of the shifted windows of a padded (H, W) map.

    After the cyclic shift by ``-shift_size``, the last window row / column holds tokens from up to two
    regions of the unshifted map; tokens attend only within their own region.

    Returns:
        float32 (nW, w*w, w*w): 0 where query and key share a region, -100 elsewhere.
    """
    labels = torch.zeros(height, width, device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            labels[rows, cols] = label
            label += 1
    windows = window_partition(labels[None, :, :, None], window_size).squeeze(-1)  # (nW, w*w)
    differs = windows[:, None, :] != windows[:, :, None]
    return torch.zeros_like(differs, dtype=torch.float32).masked_fill(differs, _MASK_VALUE)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or with drop_prob 0)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class WindowMSA(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    State: ``relative_position_bias_table`` ((2w-1)^2, heads), ``relative_position_index`` int64
    (w*w, w*w) buffer (saved, as in mmdet), ``qkv`` Linear(C, 3C), ``proj`` Linear(C, C).

    Args:
        embed_dims: channels C (divisible by num_heads).
        num_heads: attention heads.
        window_size: window side w.
        qkv_bias: bias in the qkv projection.
        qk_scale: logit scale; None gives head_dim ** -0.5.
        attn_drop_rate, proj_drop_rate: dropout on the attention weights / the output.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attends within each window.

        Args:
            x: (B * nW, N, C) window tokens, N = w * w, windows batch-major.
            mask: None or additive (nW, N, N) mask shared by every image of the batch.

        Returns:
            (B * nW, N, C).
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B * nW, heads, N, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class ShiftWindowMSA(nn.Module):
    """(Shifted-)window attention on a token map: pad to window multiples, cyclic shift, WindowMSA, undo.

    Args:
        embed_dims, num_heads, window_size, qkv_bias, qk_scale, attn_drop_rate, proj_drop_rate: of WindowMSA.
        shift_size: cyclic shift towards the top-left, 0 <= shift_size < window_size (0: plain windows).
        drop_path_rate: stochastic depth on the output.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(
            embed_dims, num_heads, window_size, qkv_bias, qk_scale, attn_drop_rate, proj_drop_rate
        )
        self.drop = DropPath(drop_path_rate)

    def forward(self, query: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        """(B, H * W, C) row-major tokens of an (H, W) map -> (B, H * W, C)."""
        b, length, c = query.shape
        h, w = hw_shape
        if length != h * w:
            raise ValueError(f"query has {length} tokens, hw_shape {tuple(hw_shape)} needs {h * w}")
        ws, shift = self.window_size, self.shift_size
        x = query.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
        h_pad, w_pad = x.shape[1], x.shape[2]
        mask = None
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(h_pad, w_pad, ws, shift, device=x.device)
        x = window_reverse(self.w_msa(window_partition(x, ws), mask), ws, h_pad, w_pad)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        return self.drop(x)


class FFN(nn.Module):
    """mmcv's FFN with two layers and identity: ``identity + drop_path(fc2(drop(gelu(fc1(x)))))``.

    Keys: ``layers.0.0`` (Linear C -> hidden), ``layers.1`` (Linear hidden -> C).
    """

    def __init__(
        self, embed_dims: int, feedforward_channels: int, ffn_drop: float = 0.0, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.GELU(), nn.Dropout(ffn_drop)),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(ffn_drop),
        )
        self.dropout_layer = DropPath(drop_path_rate)

    def forward(self, x: Tensor, identity: Tensor) -> Tensor:
        return identity + self.dropout_layer(self.layers(x))


class SwinBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``.

    Args:
        embed_dims: channels C.
        num_heads: attention heads.
        feedforward_channels: FFN hidden width.
        window_size: window side.
        shift: shift windows by window_size // 2 (every second block of a stage).
        qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate: as in SwinTransformer.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        feedforward_channels: int,
        window_size: int = 7,
        shift: bool = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(
            embed_dims,
            num_heads,
            window_size,
            shift_size=window_size // 2 if shift else 0,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop_rate=attn_drop_rate,
            proj_drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, feedforward_channels, drop_rate, drop_path_rate)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> Tensor:
        """(B, H * W, C) -> (B, H * W, C)."""
        x = x + self.attn(self.norm1(x), hw_shape)
        return self.ffn(self.norm2(x), identity=x)


class PatchEmbed(nn.Module):
    """Conv2d(k = stride = patch_size) + LayerNorm; the image is zero-padded bottom / right to a multiple.

    Keys: ``projection`` (Conv2d with bias), ``norm`` (LayerNorm; absent with patch_norm False).
    """

    def __init__(self, in_channels: int = 3, embed_dims: int = 96, patch_size: int = 4, norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims) if norm else None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, C_in, H, W) -> ((B, H' * W', C) row-major tokens, (H', W')), H' = ceil(H / patch)."""
        p = self.patch_size
        x = F.pad(x, (0, (p - x.shape[3] % p) % p, 0, (p - x.shape[2] % p) % p))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw


class PatchMerging(nn.Module):
    """2 x 2 patch merging: concatenate in ``nn.Unfold(2, stride=2)`` channel order -> LayerNorm(4C) ->
    Linear(4C, out, no bias). Odd H / W are zero-padded at the bottom / right first.

    Keys: ``norm`` (absent with norm False), ``reduction``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(4 * in_channels) if norm else None
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    @staticmethod
    def merge(x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """(B, H * W, C) -> ((B, ceil(H/2) * ceil(W/2), 4C), merged (H, W)); channel c * 4 + kh * 2 + kw."""
        b, length, c = x.shape
        h, w = hw_shape
        if length != h * w:
            raise ValueError(f"x has {length} tokens, hw_shape {tuple(hw_shape)} needs {h * w}")
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        ho, wo = x.shape[1] // 2, x.shape[2] // 2
        x = x.view(b, ho, 2, wo, 2, c).permute(0, 1, 3, 5, 2, 4)  # (B, H/2, W/2, C, kh, kw)
        return x.reshape(b, ho * wo, 4 * c), (ho, wo)

    def forward(self, x: Tensor, hw_shape: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """(B, H * W, C_in) -> ((B, H/2 * W/2, C_out), (H/2, W/2)), halves rounded up."""
        x, hw = self.merge(x, hw_shape)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x), hw


class SwinBlockSequence(nn.Module):
    """One stage: ``depth`` blocks alternating plain / shifted windows, then an optional PatchMerging.

    Keys: ``blocks.{i}``, ``downsample``.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        feedforward_channels: int,
        depth: int,
        window_size: int = 7,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float | Sequence[float] = 0.0,
        downsample: PatchMerging | None = None,
    ) -> None:
        super().__init__()
        rates = [drop_path_rate] * depth if isinstance(drop_path_rate, (int, float)) else list(drop_path_rate)
        if len(rates) != depth:
            raise ValueError(f"drop_path_rate needs {depth} entries, got {len(rates)}")
        self.blocks = nn.ModuleList(
            SwinBlock(
                embed_dims,
                num_heads,
                feedforward_channels,
                window_size,
                shift=i % 2 == 1,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=rates[i],
            )
            for i in range(depth)
        )
        self.downsample = downsample

    def forward(
        self, x: Tensor, hw_shape: tuple[int, int]
    ) -> tuple[Tensor, tuple[int, int], Tensor, tuple[int, int]]:
        """Returns (next stage's input, its (H, W), this stage's output before merging, its (H, W))."""
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        x_down, hw_down = self.downsample(x, hw_shape)
        return x_down, hw_down, x, hw_shape


class SwinTransformer(nn.Module):
    """Swin Transformer backbone (mmdet layout); defaults are BEVFusion's Swin-T.

    State-dict keys: ``patch_embed.{projection,norm}``, ``stages.{i}.blocks.{j}.{norm1,attn.w_msa.*,norm2,
    ffn.layers.*}``, ``stages.{i}.downsample.{norm,reduction}`` (all but the last stage) and ``norm{i}`` for
    i in out_indices (LayerNorms on the outputs).

    Args:
        in_channels: image channels.
        embed_dims: channels of stage 0; stage i has embed_dims * 2**i.
        patch_size: patch-embedding kernel and stride.
        window_size: attention window side.
        mlp_ratio: FFN hidden width / channels.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        out_indices: stages whose (normalized) outputs are returned, ascending.
        qkv_bias, qk_scale: of the attention.
        patch_norm: LayerNorm in patch embedding and merging.
        drop_rate, attn_drop_rate: dropout rates (0 in BEVFusion).
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks (BEVFusion: 0.2; training
            only).
    """

    def __init__(
        self,
        in_channels: int = 3,
        embed_dims: int = 96,
        patch_size: int = 4,
        window_size: int = 7,
        mlp_ratio: int = 4,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        out_indices: Sequence[int] = (1, 2, 3),
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        patch_norm: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        stages = range(len(depths))
        if any(i not in stages for i in out_indices) or list(out_indices) != sorted(set(out_indices)):
            raise ValueError(
                f"out_indices must be ascending stage indices < {len(depths)}, got {out_indices}"
            )
        self.in_channels = in_channels
        self.out_indices = tuple(out_indices)
        self.num_features = [embed_dims * 2**i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, norm=patch_norm)
        self.drop_after_pos = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dims = self.num_features[i]
            last = i == len(depths) - 1
            self.stages.append(
                SwinBlockSequence(
                    dims,
                    heads,
                    mlp_ratio * dims,
                    depth,
                    window_size,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop_rate=drop_rate,
                    attn_drop_rate=attn_drop_rate,
                    drop_path_rate=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=None if last else PatchMerging(dims, 2 * dims, norm=patch_norm),
                )
            )
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self._init_weights()

    def _init_weights(self) -> None:
        # mmdet's init without a pretrained checkpoint: truncated normal Linear weights, unit LayerNorms.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Multi-scale features of a batch of images.

        Args:
            x: (B, in_channels, H, W) images (BEVFusion: B = batch * 6 cameras, 256 x 704).

        Returns:
            One (B, num_features[i], H_i, W_i) map per i in out_indices, H_i = ceil(H / (patch * 2**i))
            (256 x 704 -> 32 x 88, 16 x 44, 8 x 22 for out_indices (1, 2, 3)).
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x, hw = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw, out, out_hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(-1, *out_hw, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
        return outs
