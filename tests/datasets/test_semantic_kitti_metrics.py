import numpy as np
import pytest
import torch

from torchsparse.datasets import (
    OFFICIAL_CLASS_NAMES,
    SPVNAS,
    ConfusionMatrix,
    confusion_matrix,
    format_iou_table,
    iou_official,
    iou_spvnas,
)


def _pairs(counts):
    """(target, pred) arrays holding each (gt, pred) pair `n` times, in a shuffled order."""
    target = np.concatenate([np.full(n, g, dtype=np.int64) for (g, _), n in counts.items()])
    pred = np.concatenate([np.full(n, p, dtype=np.int64) for (_, p), n in counts.items()])
    order = np.random.default_rng(0).permutation(target.size)
    return target[order], pred[order]


# Official toy with 4 learned classes (0 = ignore); class 3 is absent from ground truth and predictions.
#   gt 0: pred 0 x1, pred 1 x2, pred 2 x1   -> ignored entirely
#   gt 1: pred 1 x3, pred 2 x1, pred 0 x1   -> tp 3, fn 2 (the 0 prediction is a miss)
#   gt 2: pred 2 x2, pred 1 x1, pred 0 x1   -> tp 2, fn 2
# class 1: fp 1 (gt 2 -> 1)  IoU 3 / (3 + 1 + 2) = 0.5
# class 2: fp 1 (gt 1 -> 2)  IoU 2 / (2 + 1 + 2) = 0.4
# class 3: IoU 0; mIoU (0.5 + 0.4 + 0) / 3 = 0.3.
# accuracy (semantic-kitti-api getacc): (3 + 2) / 7 labelled points not predicted 0;
# over all 9 labelled points: 5 / 9.
OFFICIAL_TOY = {
    (0, 0): 1, (0, 1): 2, (0, 2): 1, (1, 1): 3, (1, 2): 1, (1, 0): 1, (2, 2): 2, (2, 1): 1, (2, 0): 1,
}
OFFICIAL_TOY_MATRIX = np.array([[1, 2, 1, 0], [1, 3, 1, 0], [1, 1, 2, 0], [0, 0, 0, 0]])

# SPVNAS toy with 3 classes; targets 255 are ignored; class 2 never appears in ground truth but is predicted.
#   gt 0: pred 0 x4, pred 1 x1          -> correct 4, seen 5
#   gt 1: pred 1 x2, pred 0 x1, pred 2 x1 -> correct 2, seen 4
#   gt 255: pred 0 x3, pred 2 x2        -> dropped before the matrix
# positives: class 0: 5, class 1: 3, class 2: 1
# class 0: 4 / (5 + 5 - 4) = 2/3; class 1: 2 / (4 + 3 - 2) = 0.4; class 2: seen 0 -> 1
# mIoU (2/3 + 0.4 + 1) / 3; accuracy 6 / 9.
SPVNAS_TOY = {(0, 0): 4, (0, 1): 1, (1, 1): 2, (1, 0): 1, (1, 2): 1, (255, 0): 3, (255, 2): 2}
SPVNAS_TOY_MATRIX = np.array([[4, 1, 0], [1, 2, 1], [0, 0, 0]])


def test_confusion_matrix_by_hand():
    target, pred = _pairs(OFFICIAL_TOY)
    conf = confusion_matrix(pred, target, 4)
    assert conf.dtype == np.int64 and conf.shape == (4, 4)
    np.testing.assert_array_equal(conf, OFFICIAL_TOY_MATRIX)
    # torch inputs, other integer dtypes and extra dimensions give the same counts
    pred_t, target_t = torch.from_numpy(pred).int().reshape(13, 1), torch.from_numpy(target).reshape(13, 1)
    conf_t = confusion_matrix(pred_t, target_t, 4)
    np.testing.assert_array_equal(conf_t, OFFICIAL_TOY_MATRIX)


def test_confusion_matrix_ignore_index():
    target, pred = _pairs(SPVNAS_TOY)
    np.testing.assert_array_equal(confusion_matrix(pred, target, 3, ignore_index=255), SPVNAS_TOY_MATRIX)
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(pred, target, 3)


def test_iou_official_by_hand():
    result = iou_official(OFFICIAL_TOY_MATRIX)
    assert result["metric"] == "official"
    assert result["iou"].dtype == np.float64
    np.testing.assert_allclose(result["iou"], [0.5, 0.4, 0.0], rtol=0, atol=1e-12)
    assert result["miou"] == pytest.approx(0.3, abs=1e-12)
    assert result["accuracy"] == pytest.approx(5 / 7, abs=1e-12)
    assert result["accuracy_all_labelled"] == pytest.approx(5 / 9, abs=1e-12)
    assert result["class_names"] == ["class_1", "class_2", "class_3"]


def test_iou_official_full_size_names_and_absent_classes():
    conf = np.zeros((20, 20), dtype=np.int64)
    conf[1, 1] = 10  # car, perfect
    conf[9, 9] = 6  # road: 6 right, 2 called sidewalk, 2 called unlabeled
    conf[9, 11] = 2
    conf[9, 0] = 2
    conf[0, 9] = 50  # unlabeled points called road: ignored
    result = iou_official(conf)
    assert result["class_names"] == list(OFFICIAL_CLASS_NAMES)
    expected = np.zeros(19)
    expected[0] = 1.0
    expected[8] = 6 / 10  # road: tp 6, fn 4
    expected[10] = 0.0  # sidewalk: only a false positive
    np.testing.assert_allclose(result["iou"], expected, rtol=0, atol=1e-12)
    assert result["miou"] == pytest.approx(1.6 / 19, abs=1e-12)
    # getacc leaves the 2 road points predicted unlabeled out: 16 right of 18; of all 20 labelled: 16.
    assert result["accuracy"] == pytest.approx(16 / 18, abs=1e-12)
    assert result["accuracy_all_labelled"] == pytest.approx(16 / 20, abs=1e-12)


def _official_by_definition(target, pred, num_classes):
    """semantic-kitti-api's statistics counted point by point from their definitions (class 0 = ignore):
    tp_c = gt c and pred c; fp_c = pred c on a labelled point of another class; fn_c = gt c, pred not c;
    accuracy = right / labelled points not predicted 0."""
    labelled = target != 0
    iou = []
    for c in range(1, num_classes):
        tp = np.sum((target == c) & (pred == c))
        fp = np.sum(labelled & (target != c) & (pred == c))
        fn = np.sum((target == c) & (pred != c))
        iou.append(tp / (tp + fp + fn + 1e-15))  # the api's epsilon: 0 for an empty union
    scored = labelled & (pred != 0)
    return np.array(iou), np.sum(scored & (pred == target)) / (np.sum(scored) + 1e-15)


@pytest.mark.parametrize("zero_fraction", [0.0, 0.1, 0.3, 1.0])
def test_iou_official_matches_the_api_definitions(zero_fraction):
    rng = np.random.default_rng(7)
    target = rng.integers(0, 20, 5000)
    pred = np.where(rng.random(5000) < 0.6, target, rng.integers(1, 20, 5000))
    pred[rng.random(5000) < zero_fraction] = 0
    target[:50] = 0  # ignored ground truth, some predicted 0 too
    result = iou_official(confusion_matrix(pred, target, 20))
    iou, accuracy = _official_by_definition(target, pred, 20)
    np.testing.assert_allclose(result["iou"], iou, rtol=1e-13, atol=0)
    assert result["miou"] == pytest.approx(iou.mean(), rel=1e-13, abs=0)
    assert result["accuracy"] == pytest.approx(accuracy, rel=1e-13, abs=0)
    labelled = target != 0
    all_labelled = np.mean(pred[labelled] == target[labelled])
    assert result["accuracy_all_labelled"] == pytest.approx(all_labelled, rel=1e-13)
    if zero_fraction == 0.0:
        assert result["accuracy"] == result["accuracy_all_labelled"]


def test_iou_official_accuracy_of_ground_truth_with_unlabeled_predictions():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 20, 10_000)
    pred = target.copy()
    pred[rng.random(10_000) < 0.1] = 0
    result = iou_official(confusion_matrix(pred, target, 20))
    assert result["accuracy"] == 1.0  # every labelled point not predicted 0 is right
    labelled = target != 0
    assert result["accuracy_all_labelled"] == np.mean(pred[labelled] != 0) < 0.95
    # Nothing predicted but 0: both accuracies are 0, no division by zero.
    nothing = iou_official(confusion_matrix(np.zeros_like(target), target, 20))
    assert nothing["accuracy"] == 0.0 and nothing["accuracy_all_labelled"] == 0.0 and nothing["miou"] == 0.0


def test_iou_spvnas_by_hand():
    result = iou_spvnas(SPVNAS_TOY_MATRIX)
    assert result["metric"] == "spvnas"
    np.testing.assert_allclose(result["iou"], [2 / 3, 0.4, 1.0], rtol=0, atol=1e-12)
    assert result["miou"] == pytest.approx((2 / 3 + 0.4 + 1.0) / 3, abs=1e-12)
    assert result["accuracy"] == pytest.approx(6 / 9, abs=1e-12)
    full = iou_spvnas(np.eye(19, dtype=np.int64))
    assert full["class_names"] == list(SPVNAS.class_names)
    np.testing.assert_array_equal(full["iou"], np.ones(19))


def test_the_two_conventions_differ_on_absent_classes():
    conf = np.diag([0, 5, 0]).astype(np.int64)
    # official: class 0 ignored, class 1 perfect, class 2 absent -> 0
    np.testing.assert_array_equal(iou_official(conf)["iou"], [1.0, 0.0])
    # spvnas: classes 0 and 2 never seen -> 1
    np.testing.assert_array_equal(iou_spvnas(conf)["iou"], [1.0, 1.0, 1.0])


def test_confusion_matrix_accumulates_like_one_shot():
    gen = np.random.default_rng(3)
    target = gen.integers(0, 6, 1000)
    pred = np.where(gen.random(1000) < 0.7, target, gen.integers(0, 6, 1000))
    cm = ConfusionMatrix(6)
    for chunk in np.array_split(np.arange(1000), 7):
        cm.update(torch.from_numpy(pred[chunk]), target[chunk])
    one_shot = confusion_matrix(pred, target, 6)
    np.testing.assert_array_equal(cm.matrix, one_shot)
    assert cm.matrix.sum() == 1000 and cm.matrix.dtype == np.int64
    # the matrix is live: an in-place reduction through torch changes it
    torch.from_numpy(cm.matrix).mul_(2)
    np.testing.assert_array_equal(cm.matrix, 2 * one_shot)
    cm.reset()
    assert cm.matrix.sum() == 0


def test_confusion_matrix_class_with_ignore_index():
    target, pred = _pairs(SPVNAS_TOY)
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(pred[:6], target[:6])
    cm.update(pred[6:], target[6:])
    np.testing.assert_array_equal(cm.matrix, SPVNAS_TOY_MATRIX)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="pred has shape"):
        confusion_matrix(np.zeros(3, dtype=np.int64), np.zeros(4, dtype=np.int64), 2)
    with pytest.raises(ValueError, match="pred values"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="pred values"):
        confusion_matrix(np.array([0, -1]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(np.array([0, 1]), np.array([0, 5]), 2)
    with pytest.raises(TypeError, match="pred"):
        confusion_matrix(np.array([0.0, 1.0]), np.array([0, 1]), 2)
    with pytest.raises(TypeError, match="target"):
        confusion_matrix(np.array([0, 1]), [0, 1], 2)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.array([0]), np.array([0]), 0)
    with pytest.raises(ValueError, match="conf"):
        iou_official(np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="conf"):
        iou_spvnas(-np.eye(3, dtype=np.int64))
    with pytest.raises(TypeError, match="conf"):
        iou_spvnas(np.eye(3))
    with pytest.raises(ValueError, match="class_names"):
        iou_official(OFFICIAL_TOY_MATRIX, class_names=["a"])
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


def test_format_iou_table():
    text = format_iou_table(iou_official(OFFICIAL_TOY_MATRIX, class_names=["car", "road", "pole"]))
    lines = text.splitlines()
    assert "official" in lines[0]
    assert lines[1].split() == ["car", "50.0"]
    assert lines[2].split() == ["road", "40.0"]
    assert lines[3].split() == ["pole", "0.0"]
    assert lines[4].split() == ["mIoU", "30.0"]
    assert lines[5].split() == ["accuracy", "71.4"]
    assert len(lines) == 6
    assert "spvnas" in format_iou_table(iou_spvnas(SPVNAS_TOY_MATRIX)).splitlines()[0]
    with pytest.raises(ValueError, match="miou"):
        format_iou_table({"iou": np.zeros(2)})
