"""Box geometry: IoU conventions, union boxes, encodings, numpy and jax agree."""

import jax.numpy as jnp
import numpy as np

from sgg_jax import boxes


def test_iou_plus_one_convention_matches_hand_computation():
    a = np.array([[0.0, 0.0, 9.0, 9.0]])  # 10x10 pixels inclusive
    b = np.array([[5.0, 0.0, 14.0, 9.0]])  # overlaps 5 columns
    # +1: inter = 5*10 = 50, union = 100 + 100 - 50 = 150
    np.testing.assert_allclose(boxes.pairwise_iou(a, b, plus_one=True), [[50 / 150]])
    # continuous: inter = 4*9 = 36, union = 81 + 81 - 36 = 126
    np.testing.assert_allclose(boxes.pairwise_iou(a, b), [[36 / 126]])


def test_iou_disjoint_identical_and_degenerate():
    a = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    b = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = boxes.pairwise_iou(a, b)
    np.testing.assert_allclose(iou, [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(boxes.elementwise_iou(a, b), [1.0, 0.0])


def test_union_boxes():
    np.testing.assert_array_equal(
        boxes.union_boxes(np.array([[0, 5, 10, 10]]), np.array([[3, 0, 4, 20]])), [[0, 0, 10, 20]]
    )


def test_encode_boxes_values():
    encoded = boxes.encode_boxes(np.array([[10.0, 20.0, 30.0, 60.0]]), np.array([[100, 200]]))
    np.testing.assert_allclose(
        encoded[0], [0.1, 0.4, 0.1, 0.4, 0.05, 0.2, 0.15, 0.6, 0.04], rtol=1e-6
    )


def test_pair_geometry_values_and_jax_agrees_with_numpy():
    subject = np.array([[0.0, 0.0, 10.0, 10.0]])
    obj = np.array([[10.0, 0.0, 30.0, 5.0]])
    size = np.array([[100, 100]])
    features = boxes.pair_geometry(subject, obj, size)
    assert features.shape == (1, boxes.PAIR_GEOMETRY_DIM)
    np.testing.assert_allclose(
        features[0, :6], [1.5, -0.25, np.log(2.0), np.log(0.5), 0.0, 0.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        features[0, 6:], boxes.encode_boxes(np.array([[0, 0, 30, 10.0]]), size)[0]
    )
    on_device = boxes.pair_geometry(jnp.asarray(subject), jnp.asarray(obj), jnp.asarray(size))
    np.testing.assert_allclose(np.asarray(on_device), features, rtol=1e-6)
