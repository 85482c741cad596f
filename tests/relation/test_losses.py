"""Tests of the losses against straightforward numpy implementations, masking and padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgg_jax.errors import ConfigError
from sgg_jax.relation import losses
from sgg_jax.relation.penet import PENetConfig
from sgg_jax.structures import SceneGraphBatch

B, N, P, C, K, D = 2, 4, 6, 13, 5, 8


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def make_inputs(seed=0, task="predcls"):
    """Random outputs, aux and batch with some padded pairs and objects."""
    rng = np.random.default_rng(seed)
    pair_mask = rng.random((B, P)) < 0.7
    pair_mask[:, 0] = True
    object_mask = np.arange(N)[None, :] < np.array([[3], [4]])
    labels = np.where(object_mask, rng.integers(1, K + 1, (B, N)), 0).astype(np.int32)
    pair_labels = np.where(pair_mask, rng.integers(0, C, (B, P)), 0).astype(np.int32)
    batch = SceneGraphBatch(
        boxes=np.zeros((B, N, 4), np.float32),
        labels=labels,
        object_mask=object_mask,
        pairs=np.zeros((B, P, 2), np.int32),
        pair_labels=pair_labels,
        pair_mask=pair_mask,
        image_size=np.full((B, 2), 100, np.int32),
        graph_mask=np.ones(B, bool),
        image_index=np.arange(B, dtype=np.int32),
        num_truncated_objects=np.zeros(B, np.int32),
        num_truncated_pairs=np.zeros(B, np.int32),
    )
    outputs = {"relation_logits": rng.normal(size=(B, P, C)).astype(np.float32) * 3}
    if task == "sgcls":
        outputs["object_logits"] = rng.normal(size=(B, N, K + 1)).astype(np.float32)
    aux = {
        "relation_projection": rng.normal(size=(B, P, D)).astype(np.float32),
        "prototype_projection": rng.normal(size=(C, D)).astype(np.float32) * 0.8,
    }
    return outputs, aux, batch


# ----------------------------------------------------------------------------------------------
# numpy references (the official code's formulation: sort, sum, divide)
# ----------------------------------------------------------------------------------------------


def reference_cross_entropy(logits, labels, mask):
    picked = np.take_along_axis(log_softmax(np.float64(logits)), labels[..., None], -1)[..., 0]
    return -picked[mask].mean()


def reference_euclidean(relation, prototypes, labels, mask, gamma1, k):
    relation, prototypes = np.float64(relation)[mask], np.float64(prototypes)
    labels = labels[mask]
    distances = ((relation[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
    positive = distances[np.arange(len(labels)), labels]
    negatives = distances.copy()
    negatives[np.arange(len(labels)), labels] = 0  # the official mask_neg
    nearest = np.sort(negatives, axis=1)[:, : k + 1].sum(1) / k
    return np.maximum(0, positive - nearest + gamma1).mean()


def reference_similarity(prototypes):
    prototypes = np.float64(prototypes)
    normalized = prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)
    similarity = normalized @ normalized.T
    return np.linalg.norm(similarity, axis=1).sum() / len(prototypes) ** 2


def reference_distance(prototypes, gamma2):
    prototypes = np.float64(prototypes)
    distances = ((prototypes[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
    nearest = np.sort(distances, axis=1)[:, :2].sum(1)
    return np.maximum(0, gamma2 - nearest).mean()


# ----------------------------------------------------------------------------------------------
# Terms
# ----------------------------------------------------------------------------------------------


def test_cross_entropy_and_soft_cross_entropy_match_numpy():
    outputs, _, batch = make_inputs()
    logits = outputs["relation_logits"]
    np.testing.assert_allclose(
        losses.cross_entropy(logits, batch.pair_labels, batch.pair_mask),
        reference_cross_entropy(logits, batch.pair_labels, batch.pair_mask),
        rtol=1e-5,
    )
    rng = np.random.default_rng(1)
    targets = rng.random((B, P, C)).astype(np.float32)
    targets /= targets.sum(-1, keepdims=True)
    expected = -(targets * log_softmax(np.float64(logits))).sum(-1)[batch.pair_mask].mean()
    np.testing.assert_allclose(
        losses.soft_cross_entropy(logits, targets, batch.pair_mask), expected, rtol=1e-5
    )
    # One-hot targets give the hard cross-entropy.
    onehot = np.eye(C, dtype=np.float32)[batch.pair_labels]
    np.testing.assert_allclose(
        losses.soft_cross_entropy(logits, onehot, batch.pair_mask),
        losses.cross_entropy(logits, batch.pair_labels, batch.pair_mask),
        rtol=1e-6,
    )
    assert float(losses.cross_entropy(logits, batch.pair_labels, np.zeros((B, P), bool))) == 0.0


@pytest.mark.parametrize("gamma1, k", [(1.0, 10), (3.0, 2)])
def test_relation_euclidean_matches_the_official_formulation(gamma1, k):
    _, aux, batch = make_inputs(seed=2)
    value = losses.prototype_euclidean_loss(
        aux["relation_projection"],
        aux["prototype_projection"],
        batch.pair_labels,
        batch.pair_mask,
        gamma1=gamma1,
        num_negatives=k,
    )
    expected = reference_euclidean(
        aux["relation_projection"],
        aux["prototype_projection"],
        batch.pair_labels,
        batch.pair_mask,
        gamma1,
        k,
    )
    assert expected > 0
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    with pytest.raises(ConfigError, match="num_negatives"):
        losses.prototype_euclidean_loss(
            aux["relation_projection"],
            aux["prototype_projection"],
            batch.pair_labels,
            batch.pair_mask,
            num_negatives=C,
        )


def test_prototype_terms_match_numpy():
    _, aux, _ = make_inputs(seed=3)
    prototypes = aux["prototype_projection"]
    np.testing.assert_allclose(
        losses.prototype_similarity_loss(prototypes), reference_similarity(prototypes), rtol=1e-5
    )
    for gamma2 in (7.0, 30.0):
        expected = reference_distance(prototypes, gamma2)
        assert expected > 0
        np.testing.assert_allclose(
            losses.prototype_distance_loss(prototypes, gamma2=gamma2), expected, rtol=1e-5
        )


def test_prototype_terms_stop_the_gradient_of_the_second_factor():
    """The gradient equals that of the same formula with the second factor held constant."""
    _, aux, _ = make_inputs(seed=4)
    prototypes = jnp.asarray(aux["prototype_projection"])
    frozen = np.float32(prototypes)
    frozen_normalized = frozen / np.linalg.norm(frozen, axis=1, keepdims=True)

    def similarity_with_constant(values):
        normalized = values / jnp.linalg.norm(values, axis=1, keepdims=True)
        return jnp.sum(jnp.linalg.norm(normalized @ frozen_normalized.T, axis=1)) / C**2

    def distance_with_constant(values):
        distances = jnp.sum((values[:, None, :] - frozen[None, :, :]) ** 2, axis=-1)
        distances = jnp.where(jnp.eye(C, dtype=bool), jnp.inf, distances)
        return jnp.mean(jnp.maximum(30.0 - distances.min(axis=1), 0.0))

    np.testing.assert_allclose(
        jax.grad(losses.prototype_similarity_loss)(prototypes),
        jax.grad(similarity_with_constant)(prototypes),
        rtol=1e-4,
        atol=1e-7,
    )
    gradient = jax.grad(lambda values: losses.prototype_distance_loss(values, gamma2=30.0))(
        prototypes
    )
    np.testing.assert_allclose(
        gradient, jax.grad(distance_with_constant)(prototypes), rtol=1e-4, atol=1e-7
    )
    assert np.abs(np.asarray(gradient)).sum() > 0


@pytest.mark.parametrize("task", ["predcls", "sgcls"])
def test_penet_losses_total_and_terms(task):
    outputs, aux, batch = make_inputs(seed=5, task=task)
    loss, terms = losses.penet_losses(outputs, aux, batch, num_negatives=4)
    expected = {
        "relation_ce": reference_cross_entropy(
            outputs["relation_logits"], batch.pair_labels, batch.pair_mask
        ),
        "relation_euclidean": reference_euclidean(
            aux["relation_projection"],
            aux["prototype_projection"],
            batch.pair_labels,
            batch.pair_mask,
            1.0,
            4,
        ),
        "prototype_similarity": reference_similarity(aux["prototype_projection"]),
        "prototype_distance": reference_distance(aux["prototype_projection"], 7.0),
    }
    if task == "sgcls":
        expected["object_ce"] = reference_cross_entropy(
            outputs["object_logits"], batch.labels, batch.object_mask
        )
    assert set(terms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(loss, sum(expected.values()), rtol=1e-4)

    weights = {"relation_ce": 2.0, "prototype_distance": 0.0}
    weighted, _ = losses.penet_losses(outputs, aux, batch, num_negatives=4, weights=weights)
    expected_weighted = sum(expected.values()) + expected["relation_ce"]
    expected_weighted -= expected["prototype_distance"]
    np.testing.assert_allclose(weighted, expected_weighted, rtol=1e-4)
    with pytest.raises(ConfigError, match="'weights'.*typo"):
        losses.penet_losses(outputs, aux, batch, weights={"typo": 1.0})


def pad_with_garbage(outputs, aux, batch, extra_images=1, extra_objects=3, extra_pairs=5):
    """The same content with more images, objects and pairs whose masks are False."""
    rng = np.random.default_rng(9)

    def grow(array, shape, fill):
        grown = np.array(fill(shape), dtype=array.dtype)
        grown[tuple(slice(0, size) for size in array.shape)] = array
        return grown

    big_b, big_n, big_p = B + extra_images, N + extra_objects, P + extra_pairs
    garbage = {
        "float": lambda shape: rng.normal(size=shape) * 1e3,
        "labels": lambda shape: rng.integers(0, K + 1, shape),
        "pair_labels": lambda shape: rng.integers(0, C, shape),
        "false": lambda shape: np.zeros(shape, bool),
    }
    padded_batch = batch.replace(
        labels=grow(batch.labels, (big_b, big_n), garbage["labels"]),
        object_mask=grow(batch.object_mask, (big_b, big_n), garbage["false"]),
        pair_labels=grow(batch.pair_labels, (big_b, big_p), garbage["pair_labels"]),
        pair_mask=grow(batch.pair_mask, (big_b, big_p), garbage["false"]),
    )
    padded_outputs = {
        "relation_logits": grow(outputs["relation_logits"], (big_b, big_p, C), garbage["float"])
    }
    padded_outputs["relation_logits"][B:, :, 0] = np.nan  # inf/NaN in padding must not leak
    if "object_logits" in outputs:
        padded_outputs["object_logits"] = grow(
            outputs["object_logits"], (big_b, big_n, K + 1), garbage["float"]
        )
        padded_outputs["object_logits"][B:, :, 1] = np.inf
    padded_aux = {
        "relation_projection": grow(
            aux["relation_projection"], (big_b, big_p, D), garbage["float"]
        ),
        "prototype_projection": aux["prototype_projection"],
    }
    padded_aux["relation_projection"][B:, 0, :] = np.nan
    # Garbage inside the existing budgets too: padded slots of real images.
    padded_batch.pair_labels[:B, :P][~batch.pair_mask] = C - 1
    padded_batch.labels[:B, :N][~batch.object_mask] = K
    padded_outputs["relation_logits"][:B, :P][~batch.pair_mask] = 1e6
    padded_aux["relation_projection"][:B, :P][~batch.pair_mask] = -1e6
    return padded_outputs, padded_aux, padded_batch


@pytest.mark.parametrize("task", ["predcls", "sgcls"])
def test_padding_never_changes_the_loss(task):
    outputs, aux, batch = make_inputs(seed=6, task=task)
    loss, terms = losses.penet_losses(outputs, aux, batch, num_negatives=4)
    padded_loss, padded_terms = losses.penet_losses(
        *pad_with_garbage(outputs, aux, batch), num_negatives=4
    )
    assert np.isfinite(float(padded_loss))
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)
    for name in terms:
        np.testing.assert_allclose(padded_terms[name], terms[name], rtol=1e-5, err_msg=name)


def test_make_penet_loss_follows_the_config():
    config = PENetConfig.small(K, C - 1, task="sgcls")
    loss_fn = losses.make_penet_loss(config, num_negatives=4, gamma2=5.0)
    outputs, aux, batch = make_inputs(seed=7, task="sgcls")
    loss, terms = jax.jit(loss_fn)(outputs, aux, batch)
    expected, expected_terms = losses.penet_losses(outputs, aux, batch, num_negatives=4, gamma2=5.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert set(terms) == set(losses.PENET_TERMS) == set(expected_terms)
    predcls_outputs, _, _ = make_inputs(seed=7, task="predcls")
    with pytest.raises(ConfigError, match="'task'"):
        loss_fn(predcls_outputs, aux, batch)
    with pytest.raises(ConfigError, match="'num_negatives'"):
        losses.make_penet_loss(config, num_negatives=C)
    with pytest.raises(ConfigError, match="'gamma1'"):
        losses.make_penet_loss(config, gamma1=float("nan"))
    with pytest.raises(ConfigError, match="'weights'"):
        losses.make_penet_loss(config, weights={"relation_ce": "high"})


# ----------------------------------------------------------------------------------------------
# RA-SGG multi-prototype terms
# ----------------------------------------------------------------------------------------------


def reference_multi_prototype_euclidean(relation, prototypes, gt, aug, lam, mask, gamma1, k):
    """The official RA-SGG formulation: λ(g⁺ − g⁻) + (1 − λ)(g⁺_mix − g⁻_mix) + γ1 in one hinge."""
    relation, prototypes = np.float64(relation)[mask], np.float64(prototypes)
    gt, aug, lam = gt[mask], aug[mask], lam[mask]
    rows = np.arange(len(gt))
    distances = ((relation[:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)

    def negative(labels):
        masked = distances.copy()
        masked[rows, labels] = 0  # the official mask_neg: zero, then the k + 1 smallest / k
        return np.sort(masked, axis=1)[:, : k + 1].sum(1) / k

    core = lam * (distances[rows, gt] - negative(gt))
    core += (1 - lam) * (distances[rows, aug] - negative(aug))
    return np.maximum(0, core + gamma1).mean()


def mixed_targets(batch, seed):
    rng = np.random.default_rng(seed)
    augmented = np.where(rng.random((B, P)) < 0.5, rng.integers(1, C, (B, P)), batch.pair_labels)
    lam = rng.beta(20, 5, (B, P))
    eye = np.eye(C)
    targets = lam[..., None] * eye[batch.pair_labels] + (1 - lam[..., None]) * eye[augmented]
    return augmented, lam, targets.astype(np.float32)


@pytest.mark.parametrize("gamma1, k", [(1.0, 10), (3.0, 2)])
def test_multi_prototype_euclidean_matches_the_official_formulation(gamma1, k):
    _, aux, batch = make_inputs(seed=11)
    augmented, lam, targets = mixed_targets(batch, seed=12)
    value = losses.multi_prototype_euclidean_loss(
        aux["relation_projection"],
        aux["prototype_projection"],
        targets,
        batch.pair_mask,
        gamma1=gamma1,
        num_negatives=k,
    )
    expected = reference_multi_prototype_euclidean(
        aux["relation_projection"],
        aux["prototype_projection"],
        batch.pair_labels,
        augmented,
        lam,
        batch.pair_mask,
        gamma1,
        k,
    )
    assert expected > 0
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    # One-hot targets give PE-Net's term exactly.
    onehot = np.eye(C, dtype=np.float32)[batch.pair_labels]
    np.testing.assert_allclose(
        losses.multi_prototype_euclidean_loss(
            aux["relation_projection"],
            aux["prototype_projection"],
            onehot,
            batch.pair_mask,
            gamma1=gamma1,
            num_negatives=k,
        ),
        losses.prototype_euclidean_loss(
            aux["relation_projection"],
            aux["prototype_projection"],
            batch.pair_labels,
            batch.pair_mask,
            gamma1=gamma1,
            num_negatives=k,
        ),
        rtol=1e-5,
    )


@pytest.mark.parametrize("task", ["predcls", "sgcls"])
def test_ra_sgg_losses_use_the_soft_targets(task):
    outputs, aux, batch = make_inputs(seed=13, task=task)
    # Without soft targets: PE-Net's loss.
    plain, plain_terms = losses.ra_sgg_losses(outputs, aux, batch, num_negatives=4)
    penet, penet_terms = losses.penet_losses(outputs, aux, batch, num_negatives=4)
    np.testing.assert_allclose(plain, penet, rtol=1e-5)
    assert set(plain_terms) == set(penet_terms)
    augmented, lam, targets = mixed_targets(batch, seed=14)
    soft = batch.replace(soft_targets=targets)
    loss, terms = losses.ra_sgg_losses(outputs, aux, soft, num_negatives=4)
    np.testing.assert_allclose(
        terms["relation_ce"],
        -(targets * log_softmax(np.float64(outputs["relation_logits"])))
        .sum(-1)[batch.pair_mask]
        .mean(),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        terms["relation_euclidean"],
        reference_multi_prototype_euclidean(
            aux["relation_projection"],
            aux["prototype_projection"],
            batch.pair_labels,
            augmented,
            lam,
            batch.pair_mask,
            1.0,
            4,
        ),
        rtol=1e-4,
    )
    for name in ("prototype_similarity", "prototype_distance", "object_ce"):
        if name in penet_terms:
            np.testing.assert_allclose(terms[name], penet_terms[name], rtol=1e-6)
    np.testing.assert_allclose(loss, sum(terms.values()), rtol=1e-5)
    # Through make_penet_loss(multi_prototype=True), jitted.
    config = PENetConfig.small(K, C - 1, task=task)
    loss_fn = losses.make_penet_loss(config, num_negatives=4, multi_prototype=True)
    np.testing.assert_allclose(jax.jit(loss_fn)(outputs, aux, soft)[0], loss, rtol=1e-5)
    with pytest.raises(ConfigError, match="'soft_targets'"):
        losses.ra_sgg_losses(outputs, aux, batch.replace(soft_targets=targets[..., :-1]))


def test_ra_sgg_padding_never_changes_the_loss():
    outputs, aux, batch = make_inputs(seed=15)
    _, _, targets = mixed_targets(batch, seed=16)
    loss, _ = losses.ra_sgg_losses(outputs, aux, batch.replace(soft_targets=targets))
    padded_outputs, padded_aux, padded_batch = pad_with_garbage(outputs, aux, batch)
    big = np.full((*padded_batch.pair_labels.shape, C), 1e3, np.float32)
    big[:B, :P] = np.where(batch.pair_mask[..., None], targets, -7.0)
    padded_loss, _ = losses.ra_sgg_losses(
        padded_outputs, padded_aux, padded_batch.replace(soft_targets=big)
    )
    assert np.isfinite(float(padded_loss))
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-5)


def test_multi_prototype_euclidean_with_tied_distances():
    _, aux, batch = make_inputs(seed=17)
    prototypes = np.array(aux["prototype_projection"])
    prototypes[6:] = prototypes[5]  # many equal distances around the k-th nearest
    augmented, lam, targets = mixed_targets(batch, seed=18)
    for k in (1, 3, 6, 9):
        np.testing.assert_allclose(
            losses.multi_prototype_euclidean_loss(
                aux["relation_projection"], prototypes, targets, batch.pair_mask, num_negatives=k
            ),
            reference_multi_prototype_euclidean(
                aux["relation_projection"],
                prototypes,
                batch.pair_labels,
                augmented,
                lam,
                batch.pair_mask,
                1.0,
                k,
            ),
            rtol=1e-4,
            err_msg=f"k={k}",
        )


def test_sgdet_soft_targets_move_to_the_detection_batch():
    """In SGDet the loss reads aux["targets"] (the detection batch); the input batch's soft targets,
    built over the detection pairs, go with it; any other pair shape is a one-line ConfigError."""
    outputs, aux, detection_batch = make_inputs(seed=21)
    _, _, targets = mixed_targets(detection_batch, seed=22)
    ground_truth = detection_batch.replace(  # the loader's batch: other pairs, other budget
        pairs=np.zeros((B, 3, 2), np.int32),
        pair_labels=np.ones((B, 3), np.int32),
        pair_mask=np.ones((B, 3), bool),
        soft_targets=targets,
    )
    aux = {**aux, "targets": detection_batch}
    moved = losses.targets_of(aux, ground_truth)
    np.testing.assert_array_equal(moved.pair_labels, detection_batch.pair_labels)
    np.testing.assert_array_equal(moved.soft_targets, targets)
    assert losses.targets_of(aux, ground_truth.replace(soft_targets=None)) is detection_batch
    assert losses.targets_of({}, ground_truth) is ground_truth
    config = PENetConfig.small(K, C - 1)
    loss_fn = losses.make_penet_loss(config, num_negatives=4, multi_prototype=True)
    expected, _ = losses.ra_sgg_losses(
        outputs, aux, detection_batch.replace(soft_targets=targets), num_negatives=4
    )
    np.testing.assert_allclose(loss_fn(outputs, aux, ground_truth)[0], expected, rtol=1e-6)
    with pytest.raises(ConfigError, match="option 'soft_targets': have pairs of shape"):
        losses.targets_of(aux, ground_truth.replace(soft_targets=targets[:, :3]))
