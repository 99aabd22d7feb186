"""BEVFusion's object head: TransFusion (heatmap-initialised object queries, one transformer decoder layer,
per-query box regression) in plain PyTorch, with the official state-dict keys (`heads.object.*`).

Reference: mit-han-lab/bevfusion db75150, mmdet3d/models/heads/bbox/transfusion.py (TransFusionHead.forward_single,
get_bboxes), mmdet3d/models/utils/transformer.py (TransformerDecoderLayer, MultiheadAttention,
PositionEmbeddingLearned, FFN), mmdet3d/core/bbox/coders/transfusion_bbox_coder.py (decode) and
configs/nuscenes/det/transfusion/default.yaml plus .../swint_v0p075/default.yaml (grid 1440 -> BEV 180 x 180).

Conventions (all from the files above):

* BEV axes: the input (B, C, H, W) has H along LiDAR x and W along LiDAR y; a flat cell index is ``h * W + w``
  and its query position is the cell centre ``(h + 0.5, w + 0.5)`` in BEV cells.
* Local maxima: sigmoid heatmap, 3 x 3 max-pool without padding, so the one-cell border of every class is
  suppressed; pedestrian (8) and traffic_cone (9) keep the raw heatmap everywhere (nuScenes).
* Proposals: the top ``num_proposals`` of the suppressed heatmap over classes x cells (class-major flat index).
* Boxes: ``(x, y, z, w, l, h, yaw, vx, vy)`` in the LiDAR frame, metres, radians and m/s; ``z`` is the box
  **bottom** centre (gravity centre = z + h / 2); (w, l, h) are nuScenes' ``wlh`` in that order; ``yaw`` is
  BEVFusion's LiDAR yaw, nuScenes' yaw = -yaw - pi / 2 (see nuscenes_dataset.py, output_to_nusc_box).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchsparse.classes import NUSCENES_DETECTION_CLASSES

__all__ = [
    "CLASS_NAMES",
    "PositionEmbeddingLearned",
    "TransFusionHead",
    "TransformerDecoderLayer",
    "decode_boxes",
    "local_maxima",
]

# nuScenes detection classes in label order (torchsparse.classes, shared with the nuScenes loader).
CLASS_NAMES = NUSCENES_DETECTION_CLASSES

# The regression heads in the order of common_heads (dict order decides the state-dict order), then heatmap.
_REGRESSION_HEADS = (("center", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))


def local_maxima(heatmap: Tensor, kernel_size: int = 3, raw_classes: Sequence[int] = (8, 9)) -> Tensor:
    """Zeroes every cell that is not the maximum of its kernel_size x kernel_size window.

    As the reference: the max-pool has no padding, so the ``kernel_size // 2`` border cells never count as maxima
    (they are zeroed unless their value is exactly 0); ties with the window maximum are all kept; the classes in
    raw_classes are returned unchanged (nuScenes: pedestrian and traffic_cone, which are smaller than a cell).

    Args:
        heatmap: float (B, num_classes, H, W) class probabilities (after sigmoid).
        kernel_size: odd window size; 1 disables the suppression.
        raw_classes: class ids kept without suppression.

    Returns:
        float (B, num_classes, H, W), the input where it is a local maximum and 0 elsewhere.
    """
    if heatmap.dim() != 4:
        raise ValueError(f"heatmap must be (B, C, H, W), got {tuple(heatmap.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if kernel_size == 1:
        return heatmap.clone()
    pad = kernel_size // 2
    height, width = heatmap.shape[-2:]
    window_max = torch.zeros_like(heatmap)
    window_max[..., pad : height - pad, pad : width - pad] = F.max_pool2d(heatmap, kernel_size, stride=1)
    raw = list(raw_classes)
    window_max[:, raw] = heatmap[:, raw]
    return heatmap * (heatmap == window_max)


def decode_boxes(
    preds: dict[str, Tensor],
    pc_range: Sequence[float] = (-54.0, -54.0),
    voxel_size: Sequence[float] = (0.075, 0.075),
    out_size_factor: int = 8,
    post_center_range: Sequence[float] | None = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
    score_threshold: float | None = None,
) -> list[dict[str, Tensor]]:
    """Turns the head's raw predictions into metric LiDAR boxes (TransFusionBBoxCoder.decode after get_bboxes).

    score = sigmoid(heatmap) * query_heatmap_score * one_hot(query_labels); the label and score of a proposal are
    the arg-max and max of that vector over classes. center * out_size_factor * voxel_size + pc_range gives x, y;
    dims = exp(dim); z = height - h / 2 (gravity centre to bottom); yaw = atan2(rot[0], rot[1]).

    Args:
        preds: the output of :meth:`TransFusionHead.forward` (only center, height, dim, rot, vel, heatmap,
            query_heatmap_score and query_labels are read); every tensor has batch size B and P proposals.
        pc_range: (x_min, y_min) of the BEV grid in metres.
        voxel_size: (x, y) voxel size in metres.
        out_size_factor: voxels per BEV cell.
        post_center_range: (x_min, y_min, z_min, x_max, y_max, z_max); boxes whose (x, y, bottom z) lie outside
            (inclusive bounds) are dropped; None keeps all.
        score_threshold: drop boxes with score <= this; None keeps all. The released config's 0.0 is a no-op in
            the reference (it tests ``if self.score_threshold:``), so the default None reproduces it.

    Returns:
        One dict per sample, proposals in query order: ``boxes`` (n, 9) (x, y, z, w, l, h, yaw, vx, vy) in the
        input dtype, ``scores`` (n,), ``labels`` int64 (n,).
    """
    scores = preds["heatmap"].sigmoid() * preds["query_heatmap_score"]
    scores = scores * F.one_hot(preds["query_labels"], scores.shape[1]).transpose(1, 2).to(scores.dtype)
    best, labels = scores.max(dim=1)

    scale = torch.tensor(voxel_size[:2], dtype=scores.dtype, device=scores.device) * out_size_factor
    offset = torch.tensor(pc_range[:2], dtype=scores.dtype, device=scores.device)
    xy = preds["center"].transpose(1, 2) * scale + offset
    dims = preds["dim"].transpose(1, 2).exp()
    z = preds["height"].transpose(1, 2) - dims[..., 2:3] * 0.5
    yaw = torch.atan2(preds["rot"][:, 0], preds["rot"][:, 1]).unsqueeze(-1)
    boxes = torch.cat([xy, z, dims, yaw, preds["vel"].transpose(1, 2)], dim=-1)

    keep = torch.ones_like(best, dtype=torch.bool)
    if post_center_range is not None:
        bounds = torch.tensor(post_center_range, dtype=boxes.dtype, device=boxes.device)
        keep &= ((boxes[..., :3] >= bounds[:3]) & (boxes[..., :3] <= bounds[3:])).all(-1)
    if score_threshold is not None:
        keep &= best > score_threshold
    return [
        {"boxes": boxes[i][keep[i]], "scores": best[i][keep[i]], "labels": labels[i][keep[i]]}
        for i in range(boxes.shape[0])
    ]


class _ConvBNReLU(nn.Module):
    """mmcv's ConvModule with a norm: conv (no bias) -> bn -> ReLU, keys ``conv.*`` and ``bn.*``."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute position embedding: Conv1d(k1) -> BN1d -> ReLU -> Conv1d(k1), keys
    ``position_embedding_head.{0,1,3}``.

    Args:
        input_channel: coordinates per position (2: BEV cell x, y).
        num_pos_feats: embedding channels.
    """

    def __init__(self, input_channel: int = 2, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.position_embedding_head = nn.Sequential(
            nn.Conv1d(input_channel, num_pos_feats, 1),
            nn.BatchNorm1d(num_pos_feats),
            nn.ReLU(inplace=True),
            nn.Conv1d(num_pos_feats, num_pos_feats, 1),
        )

    def forward(self, xyz: Tensor) -> Tensor:
        """float (B, P, input_channel) -> float (B, num_pos_feats, P)."""
        return self.position_embedding_head(xyz.transpose(1, 2))


class TransformerDecoderLayer(nn.Module):
    """TransFusion's post-norm decoder layer: self-attention over the queries, cross-attention from the queries
    to the BEV cells, then a ReLU feed-forward block; each followed by dropout, the residual and a LayerNorm.

    Positional embeddings are added to the inputs of each attention: self-attention uses q = k = v = query +
    pos(query); cross-attention uses query + pos(query) and, for both key **and value**, key + pos(key).
    The attentions are torch.nn.MultiheadAttention (sequence-first), whose maths and keys (in_proj_weight,
    in_proj_bias, out_proj.*) equal those of the reference's own MultiheadAttention copy.

    Args:
        d_model: channels of queries and keys.
        nhead: attention heads.
        dim_feedforward: hidden channels of the feed-forward block.
        dropout: dropout on attention weights and after each block.
    """

    def __init__(self, d_model: int = 128, nhead: int = 8, dim_feedforward: int = 256, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.self_posembed = PositionEmbeddingLearned(2, d_model)
        self.cross_posembed = PositionEmbeddingLearned(2, d_model)

    def forward(self, query: Tensor, key: Tensor, query_pos: Tensor, key_pos: Tensor) -> Tensor:
        """Updates the queries.

        Args:
            query: float (B, C, P) query features.
            key: float (B, C, K) BEV features (keys and values).
            query_pos: float (B, P, 2) query positions in BEV cells.
            key_pos: float (B, K, 2) key positions in BEV cells.

        Returns:
            float (B, C, P).
        """
        query_embed = self.self_posembed(query_pos).permute(2, 0, 1)  # (P, B, C)
        key_embed = self.cross_posembed(key_pos).permute(2, 0, 1)  # (K, B, C)
        query = query.permute(2, 0, 1)
        key = key.permute(2, 0, 1)

        q = query + query_embed
        query = self.norm1(query + self.dropout1(self.self_attn(q, q, q, need_weights=False)[0]))

        k = key + key_embed
        attended = self.multihead_attn(query + query_embed, k, k, need_weights=False)[0]
        query = self.norm2(query + self.dropout2(attended))

        ffn = self.linear2(self.dropout(F.relu(self.linear1(query))))
        query = self.norm3(query + self.dropout3(ffn))
        return query.permute(1, 2, 0)


class _PredictionHeads(nn.Module):
    """mmdet3d's FFN: per output a ConvModule (Conv1d k1 no bias, BN1d, ReLU) to head_conv channels, then a
    Conv1d k1 with bias; keys ``<name>.0.{conv,bn}.*`` and ``<name>.1.*``."""

    def __init__(self, in_channels: int, heads: Sequence[tuple[str, int]], head_conv: int = 64) -> None:
        super().__init__()
        self.names = tuple(name for name, _ in heads)
        for name, out_channels in heads:
            block = nn.Sequential(
                _ConvBNReLU(nn.Conv1d(in_channels, head_conv, 1, bias=False), nn.BatchNorm1d(head_conv)),
                nn.Conv1d(head_conv, out_channels, 1),
            )
            self.add_module(name, block)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {name: getattr(self, name)(x) for name in self.names}


class TransFusionHead(nn.Module):
    """TransFusion detection head (BEVFusion, nuScenes): object queries from the heatmap's local maxima, one
    transformer decoder layer over the BEV features, per-query box and class predictions; no NMS at test.

    State-dict keys equal ``heads.object.*`` of the official checkpoint: shared_conv, heatmap_head,
    class_encoding, decoder.0, prediction_heads.0.

    Args:
        in_channels: channels of the BEV input (SECONDFPN: 512).
        hidden_channel: channels of queries and BEV features after shared_conv.
        num_classes: object classes (CLASS_NAMES order for nuScenes).
        num_proposals: object queries per sample.
        num_heads: attention heads.
        ffn_channel: hidden channels of the decoder's feed-forward block.
        dropout: dropout of the decoder layer (active in training only).
        num_decoder_layers: decoder layers (BEVFusion: 1).
        nms_kernel_size: window of the heatmap's local-maximum suppression.
        raw_classes: classes exempt from the suppression (nuScenes: pedestrian, traffic_cone).
        bn_momentum: momentum of every BatchNorm.
        pc_range, voxel_size, out_size_factor, post_center_range, score_threshold: box decoding, see
            :func:`decode_boxes`.
    """

    def __init__(
        self,
        in_channels: int = 512,
        hidden_channel: int = 128,
        num_classes: int = 10,
        num_proposals: int = 200,
        num_heads: int = 8,
        ffn_channel: int = 256,
        dropout: float = 0.1,
        num_decoder_layers: int = 1,
        nms_kernel_size: int = 3,
        raw_classes: Sequence[int] = (8, 9),
        bn_momentum: float = 0.1,
        pc_range: Sequence[float] = (-54.0, -54.0),
        voxel_size: Sequence[float] = (0.075, 0.075),
        out_size_factor: int = 8,
        post_center_range: Sequence[float] | None = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
        score_threshold: float | None = None,
    ) -> None:
        super().__init__()
        if any(not 0 <= c < num_classes for c in raw_classes):
            raise ValueError(
                f"raw_classes must be class ids below num_classes={num_classes}, got {raw_classes}"
            )
        self.num_classes = num_classes
        self.num_proposals = num_proposals
        self.nms_kernel_size = nms_kernel_size
        self.raw_classes = tuple(raw_classes)
        self.pc_range = tuple(pc_range)
        self.voxel_size = tuple(voxel_size)
        self.out_size_factor = out_size_factor
        self.post_center_range = None if post_center_range is None else tuple(post_center_range)
        self.score_threshold = score_threshold

        self.shared_conv = nn.Conv2d(in_channels, hidden_channel, 3, padding=1)
        self.heatmap_head = nn.Sequential(
            _ConvBNReLU(
                nn.Conv2d(hidden_channel, hidden_channel, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden_channel),
            ),
            nn.Conv2d(hidden_channel, num_classes, 3, padding=1),
        )
        self.class_encoding = nn.Conv1d(num_classes, hidden_channel, 1)
        self.decoder = nn.ModuleList(
            TransformerDecoderLayer(hidden_channel, num_heads, ffn_channel, dropout)
            for _ in range(num_decoder_layers)
        )
        heads = (*_REGRESSION_HEADS, ("heatmap", num_classes))
        self.prediction_heads = nn.ModuleList(
            _PredictionHeads(hidden_channel, heads) for _ in range(num_decoder_layers)
        )

        for p in self.decoder.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = bn_momentum

    @staticmethod
    def bev_positions(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Cell centres in BEV cells, float (H * W, 2): row ``h * W + w`` is (h + 0.5, w + 0.5)."""
        rows = torch.arange(height, dtype=dtype, device=device) + 0.5
        cols = torch.arange(width, dtype=dtype, device=device) + 0.5
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)

    def forward(self, bev: Tensor) -> dict[str, Tensor]:
        """Raw predictions of the last decoder layer.

        Args:
            bev: float (B, in_channels, H, W) fused BEV features (BEVFusion: (B, 512, 180, 180)).

        Returns:
            Dict with P = num_proposals: ``center`` (B, 2, P) in BEV cells (query cell centre + offset),
            ``height`` (B, 1, P) gravity-centre z in metres, ``dim`` (B, 3, P) log (w, l, h), ``rot`` (B, 2, P)
            (sin, cos), ``vel`` (B, 2, P) m/s, ``heatmap`` (B, num_classes, P) class logits,
            ``query_heatmap_score`` (B, num_classes, P) the suppressed dense heatmap at each query's cell,
            ``query_labels`` int64 (B, P) the class that chose each query, ``query_index`` int64 (B, P) the flat
            cell ``h * W + w`` of each query, and ``dense_heatmap`` (B, num_classes, H, W) logits.
        """
        if bev.dim() != 4 or bev.shape[1] != self.shared_conv.in_channels:
            raise ValueError(f"bev must be (B, {self.shared_conv.in_channels}, H, W), got {tuple(bev.shape)}")
        batch, _, height, width = bev.shape
        if self.num_proposals > self.num_classes * height * width:
            raise ValueError(
                f"num_proposals={self.num_proposals} exceeds classes x cells of a {height}x{width} map"
            )
        features = self.shared_conv(bev)
        features_flat = features.flatten(2)  # (B, C, H*W)
        bev_pos = self.bev_positions(height, width, bev.dtype, bev.device).expand(batch, -1, -1)

        dense_heatmap = self.heatmap_head(features)
        heatmap = local_maxima(
            dense_heatmap.detach().sigmoid(), self.nms_kernel_size, self.raw_classes
        ).flatten(2)

        # Stable descending sort over classes x cells: ties (mostly suppressed zeros) go to the lower class, then
        # the lower cell, which is what the reference's sort gives in practice.
        order = heatmap.flatten(1).argsort(dim=1, descending=True, stable=True)[:, : self.num_proposals]
        query_labels = torch.div(order, height * width, rounding_mode="floor")
        query_index = order % (height * width)

        query = features_flat.gather(2, query_index.unsqueeze(1).expand(-1, features_flat.shape[1], -1))
        one_hot = F.one_hot(query_labels, self.num_classes).transpose(1, 2).to(query.dtype)
        query = query + self.class_encoding(one_hot)
        query_pos = bev_pos.gather(1, query_index.unsqueeze(-1).expand(-1, -1, 2))

        for layer, heads in zip(self.decoder, self.prediction_heads):
            query = layer(query, features_flat, query_pos, bev_pos)
            preds = heads(query)
            preds["center"] = preds["center"] + query_pos.transpose(1, 2)
            query_pos = preds["center"].detach().transpose(1, 2)

        preds["query_heatmap_score"] = heatmap.gather(
            2, query_index.unsqueeze(1).expand(-1, self.num_classes, -1)
        )
        preds["query_labels"] = query_labels
        preds["query_index"] = query_index
        preds["dense_heatmap"] = dense_heatmap
        return preds

    def decode(self, preds: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Metric boxes per sample from :meth:`forward`'s output; see :func:`decode_boxes` (this head's config)."""
        return decode_boxes(
            preds,
            self.pc_range,
            self.voxel_size,
            self.out_size_factor,
            self.post_center_range,
            self.score_threshold,
        )
