import math

import pytest
import torch
from torch import nn

from torchsparse.models.bevfusion.head import (
    CLASS_NAMES,
    TransformerDecoderLayer,
    TransFusionHead,
    decode_boxes,
    local_maxima,
)
from torchsparse.testing.bevfusion import official_dump, official_keys, random_official_state_dict

PREFIX = "heads.object."
DUMP = official_dump()
REFERENCE = official_keys(PREFIX)
POST_CENTER_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)


def _official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in the official layout, with BN statistics that keep activations O(1)."""
    return random_official_state_dict(PREFIX, seed, scalar=5)


@pytest.fixture(scope="module")
def head_and_output():
    torch.manual_seed(0)
    head = TransFusionHead().eval()
    head.load_state_dict(_official_state_dict())
    bev = torch.randn(1, 512, 180, 180)
    with torch.no_grad():
        preds = head(bev)
    return head, bev, preds


def test_class_names_follow_the_nuscenes_label_order():
    assert CLASS_NAMES == (
        "car",
        "truck",
        "construction_vehicle",
        "bus",
        "trailer",
        "barrier",
        "motorcycle",
        "bicycle",
        "pedestrian",
        "traffic_cone",
    )


def test_keys_shapes_and_order_equal_the_release():
    head = TransFusionHead()
    assert [(k, list(v.shape)) for k, v in head.state_dict().items()] == REFERENCE
    assert len(REFERENCE) == DUMP["prefix_key_counts"]["heads.object"] == 96
    assert sum(p.numel() for p in head.parameters()) == DUMP["prefix_param_counts"]["heads.object"]
    head.load_state_dict(_official_state_dict(), strict=True)
    assert head.heatmap_head[0].conv.bias is None
    assert all(
        head.prediction_heads[0].get_submodule(f"{n}.0.conv").bias is None for n in ("center", "heatmap")
    )
    assert head.shared_conv.bias is not None and head.heatmap_head[1].bias is not None


def test_forward_returns_200_proposals(head_and_output):
    _, _, preds = head_and_output
    shapes = {k: tuple(v.shape) for k, v in preds.items()}
    assert shapes == {
        "center": (1, 2, 200),
        "height": (1, 1, 200),
        "dim": (1, 3, 200),
        "rot": (1, 2, 200),
        "vel": (1, 2, 200),
        "heatmap": (1, 10, 200),
        "query_heatmap_score": (1, 10, 200),
        "query_labels": (1, 200),
        "query_index": (1, 200),
        "dense_heatmap": (1, 10, 180, 180),
    }
    assert preds["query_labels"].dtype == preds["query_index"].dtype == torch.int64
    assert all(bool(torch.isfinite(v).all()) for v in preds.values())


def test_queries_are_the_top_local_maxima_over_classes_and_cells(head_and_output):
    _, _, preds = head_and_output
    suppressed = local_maxima(preds["dense_heatmap"].sigmoid(), 3, (8, 9)).flatten(1)
    top = suppressed.topk(200, dim=1).values
    labels, cells = preds["query_labels"], preds["query_index"]
    chosen = suppressed[0, labels[0] * 180 * 180 + cells[0]]
    torch.testing.assert_close(chosen, top[0], rtol=0, atol=0)
    assert bool((chosen > 0).all())  # enough maxima: no suppressed cell was picked
    score = preds["query_heatmap_score"][0]
    torch.testing.assert_close(score[labels[0], torch.arange(200)], chosen, rtol=0, atol=0)
    assert len(set((labels[0] * 32400 + cells[0]).tolist())) == 200


def test_decode_returns_finite_boxes_inside_the_post_center_range(head_and_output):
    head, _, preds = head_and_output
    (result,) = head.decode(preds)
    boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
    n = boxes.shape[0]
    assert 0 < n <= 200 and boxes.shape == (n, 9) and scores.shape == labels.shape == (n,)
    assert boxes.dtype == scores.dtype == torch.float32 and labels.dtype == torch.int64
    assert bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(scores).all())
    low, high = torch.tensor(POST_CENTER_RANGE[:3]), torch.tensor(POST_CENTER_RANGE[3:])
    assert bool(((boxes[:, :3] >= low) & (boxes[:, :3] <= high)).all())
    assert bool((boxes[:, 3:6] > 0).all()) and bool((boxes[:, 6].abs() <= math.pi).all())
    assert bool(((scores >= 0) & (scores <= 1)).all()) and bool(((labels >= 0) & (labels < 10)).all())
    # score = sigmoid(class logit) x heatmap peak, both of the query's class
    unfiltered = decode_boxes(preds, post_center_range=None)[0]
    q = torch.arange(200)
    expected = (
        preds["heatmap"][0].sigmoid()[preds["query_labels"][0], q]
        * preds["query_heatmap_score"][0][preds["query_labels"][0], q]
    )
    torch.testing.assert_close(unfiltered["scores"], expected)
    torch.testing.assert_close(unfiltered["labels"], preds["query_labels"][0])


def test_box_centre_axes_follow_the_bev_rows_and_columns():
    """H is LiDAR x and W is LiDAR y: with a zero centre offset a query at cell (h, w) decodes to the centre of
    that cell, x = (h + 0.5) * 8 * 0.075 - 54, y = (w + 0.5) * 0.6 - 54."""
    torch.manual_seed(1)
    head = TransFusionHead(num_proposals=30, post_center_range=None).eval()
    head.load_state_dict(_official_state_dict(seed=1))
    center = head.prediction_heads[0].center[1]
    nn.init.zeros_(center.weight)
    nn.init.zeros_(center.bias)
    with torch.no_grad():
        preds = head(torch.randn(1, 512, 20, 24))
    cells = preds["query_index"][0]
    h, w = cells // 24, cells % 24
    boxes = head.decode(preds)[0]["boxes"]
    torch.testing.assert_close(boxes[:, 0], (h + 0.5) * 0.6 - 54)
    torch.testing.assert_close(boxes[:, 1], (w + 0.5) * 0.6 - 54)


def test_samples_of_a_batch_are_independent():
    torch.manual_seed(2)
    head = TransFusionHead(num_proposals=25).eval()
    head.load_state_dict(_official_state_dict(seed=2))
    bev = torch.randn(2, 512, 16, 16)
    with torch.no_grad():
        both, second = head(bev), head(bev[1:])
    for key, value in second.items():
        torch.testing.assert_close(both[key][1:], value, rtol=1e-4, atol=1e-5)


def test_local_maxima_keeps_pedestrian_and_traffic_cone_raw():
    heatmap = torch.zeros(1, 10, 6, 6)
    for c in (0, 5, 8, 9):
        heatmap[0, c, 2, 2] = 0.9  # a peak
        heatmap[0, c, 2, 3] = 0.5  # its neighbour
        heatmap[0, c, 4, 4] = 0.3  # an isolated maximum inside
        heatmap[0, c, 0, 3] = 0.7  # an isolated maximum on the border
    heatmap[0, 1, 3, 3] = heatmap[0, 1, 3, 4] = 0.6  # equal neighbours: both are maxima
    out = local_maxima(heatmap, kernel_size=3, raw_classes=(8, 9))

    expected = torch.zeros_like(heatmap)
    for c in (0, 5):  # the neighbour and the (never pooled) border cell are suppressed
        expected[0, c, 2, 2], expected[0, c, 4, 4] = 0.9, 0.3
    expected[0, 8:] = heatmap[0, 8:]  # pedestrian, traffic_cone: unchanged
    expected[0, 1, 3, 3] = expected[0, 1, 3, 4] = 0.6
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(local_maxima(heatmap, kernel_size=1), heatmap, rtol=0, atol=0)
    with pytest.raises(ValueError, match="kernel_size"):
        local_maxima(heatmap, kernel_size=2)


def _explicit_decoder_layer(layer, query, key, query_pos, key_pos):
    """TransformerDecoderLayer written out with explicit per-head softmax attention (eval mode)."""

    def posembed(module, xyz):  # (B, N, 2) -> (B, N, C)
        conv0, bn, _, conv3 = module.position_embedding_head
        x = xyz @ conv0.weight[:, :, 0].T + conv0.bias
        x = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        return x.clamp_min(0) @ conv3.weight[:, :, 0].T + conv3.bias

    def attention(mha, q_in, k_in, v_in):  # (B, N, C) each
        c, heads = q_in.shape[-1], mha.num_heads
        wq, wk, wv = mha.in_proj_weight.split(c)
        bq, bk, bv = mha.in_proj_bias.split(c)
        q, k, v = q_in @ wq.T + bq, k_in @ wk.T + bk, v_in @ wv.T + bv
        d = c // heads
        outs = []
        for h in range(heads):
            qh, kh, vh = (t[..., h * d : (h + 1) * d] for t in (q, k, v))
            logits = qh @ kh.transpose(1, 2) / math.sqrt(d)
            weights = logits.exp() / logits.exp().sum(-1, keepdim=True)
            outs.append(weights @ vh)
        return torch.cat(outs, -1) @ mha.out_proj.weight.T + mha.out_proj.bias

    def layer_norm(norm, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    q, k = query.transpose(1, 2), key.transpose(1, 2)  # (B, N, C)
    q_embed, k_embed = posembed(layer.self_posembed, query_pos), posembed(layer.cross_posembed, key_pos)
    q = layer_norm(layer.norm1, q + attention(layer.self_attn, q + q_embed, q + q_embed, q + q_embed))
    q = layer_norm(layer.norm2, q + attention(layer.multihead_attn, q + q_embed, k + k_embed, k + k_embed))
    hidden = (q @ layer.linear1.weight.T + layer.linear1.bias).clamp_min(0)
    q = layer_norm(layer.norm3, q + hidden @ layer.linear2.weight.T + layer.linear2.bias)
    return q.transpose(1, 2)


def test_decoder_layer_equals_explicit_softmax_attention():
    torch.manual_seed(3)
    layer = TransformerDecoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.1).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for posembed in (layer.self_posembed, layer.cross_posembed):
            bn = posembed.position_embedding_head[1]
            bn.running_mean.copy_(torch.randn_like(bn.running_mean) * 0.2)
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.5)
    layer.eval()
    query, key = torch.randn(2, 8, 3, dtype=torch.float64), torch.randn(2, 8, 5, dtype=torch.float64)
    query_pos, key_pos = (
        torch.rand(2, 3, 2, dtype=torch.float64) * 4,
        torch.rand(2, 5, 2, dtype=torch.float64) * 4,
    )
    with torch.no_grad():
        out = layer(query, key, query_pos, key_pos)
        expected = _explicit_decoder_layer(layer, query, key, query_pos, key_pos)
    assert out.shape == (2, 8, 3)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_decoder_layer_dropout_acts_in_training_only():
    torch.manual_seed(4)
    layer = TransformerDecoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.5).double()
    args = (
        torch.randn(1, 8, 4, dtype=torch.float64),
        torch.randn(1, 8, 6, dtype=torch.float64),
        torch.rand(1, 4, 2, dtype=torch.float64),
        torch.rand(1, 6, 2, dtype=torch.float64),
    )
    layer.eval()
    torch.testing.assert_close(layer(*args), layer(*args), rtol=0, atol=0)
    layer.train()
    assert not torch.equal(layer(*args), layer(*args))


def test_box_decoding_of_a_hand_built_prediction():
    """Three proposals: one kept, one beyond x = 61.2 m, one whose bottom z is above 10 m. The post-center
    filter reads the bottom z (gravity z 10.5 with h = 1.5 -> 9.75 is kept)."""
    dims = torch.tensor([2.0, 4.0, 1.5]).log()
    preds = {
        # center in BEV cells, already including the query cell centre
        "center": torch.tensor([[[10.25, 300.0, 90.0, 90.0], [20.75, 20.0, 90.0, 90.0]]]),
        "height": torch.tensor([[[1.0, 1.0, 20.0, 10.5]]]),
        "dim": dims[None, :, None].expand(1, 3, 4).clone(),
        "rot": torch.tensor([[[1.0, 0.0, 0.0, -0.5], [0.0, 1.0, -1.0, -0.5]]]),  # (sin, cos)
        "vel": torch.tensor([[[3.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]]),
        "heatmap": torch.zeros(1, 10, 4),  # sigmoid 0.5 for every class
        "query_heatmap_score": torch.full((1, 10, 4), 0.8),
        "query_labels": torch.tensor([[3, 8, 0, 9]]),
    }
    (result,) = decode_boxes(preds, post_center_range=POST_CENTER_RANGE)
    # x = 10.25 * 8 * 0.075 - 54 = -47.85, y = 20.75 * 0.6 - 54 = -41.55, z = 1.0 - 1.5 / 2 = 0.25
    expected_first = [-47.85, -41.55, 0.25, 2.0, 4.0, 1.5, math.pi / 2, 3.0, -1.0]
    # x = y = 90 * 0.6 - 54 = 0, z = 10.5 - 0.75 = 9.75, yaw = atan2(-0.5, -0.5) = -3 pi / 4
    expected_last = [0.0, 0.0, 9.75, 2.0, 4.0, 1.5, -3 * math.pi / 4, 0.0, 0.0]
    torch.testing.assert_close(result["boxes"], torch.tensor([expected_first, expected_last]))
    torch.testing.assert_close(result["scores"], torch.tensor([0.4, 0.4]))
    assert result["labels"].tolist() == [3, 9] and result["labels"].dtype == torch.int64

    everything = decode_boxes(preds, post_center_range=None)[0]
    assert everything["boxes"].shape == (4, 9)
    torch.testing.assert_close(everything["boxes"][1, :3], torch.tensor([126.0, -42.0, 0.25]))
    assert decode_boxes(preds, score_threshold=0.5)[0]["boxes"].shape == (0, 9)


def test_bad_input_is_rejected():
    head = TransFusionHead(num_proposals=5)
    with pytest.raises(ValueError, match="bev must be"):
        head(torch.randn(1, 256, 8, 8))
    with pytest.raises(ValueError, match="raw_classes"):
        TransFusionHead(raw_classes=(10,))
