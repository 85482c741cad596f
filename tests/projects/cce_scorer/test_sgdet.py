"""CCE + Scorer in SGDet from pixels: the losses, the Scorer and its ranking work on the pairs of
the model's own detections (``aux["targets"]``), and the Scorer's image feature is the detector
backbone's pooled top map.

The loss test builds the detection batch from hand detections (fast). The model tests run one tiny
MotifNet on a tiny detector (random weights; every detection kept; the ground-truth boxes of the
training pass are the first pass's detections, so the detection batch has foreground pairs to
train on); compiling the detector's SGDet graph three times takes about 30 s of CPU, so they are
in the e2e tier with the other tests that compile the detector.
"""

import jax
import numpy as np
import pytest

from sgg_jax.data import pipeline
from sgg_jax.detection.detector import DetectorConfig, FasterRCNN
from sgg_jax.evaluation.collect import detection_predictions
from sgg_jax.projects.cce_scorer.experiment import multi_scorer, predict_fn
from sgg_jax.projects.cce_scorer.losses import (
    CCEScorerLossConfig,
    cce,
    make_cce_scorer_loss,
    scorer_bce,
    scorer_targets,
)
from sgg_jax.projects.cce_scorer.model import CCEScorerModel
from sgg_jax.projects.cce_scorer.scorer import ScorerConfig
from sgg_jax.relation import sgdet as sgdet_ops
from sgg_jax.relation.features import pooled_image_feature
from sgg_jax.relation.motifs import MotifNet, MotifsConfig
from sgg_jax.relation.sgdet import SGDetConfig
from sgg_jax.structures import SceneGraph
from sgg_jax.train import make_mesh
from tests.relation.test_sgdet import detections, gt_batch

DETECTOR = DetectorConfig.tiny(detections_per_image=4, score_thresh=0.0)
SIZES = [(64, 64), (40, 56), (64, 48), (56, 64)]  # (height, width); the canvas is 64 x 64


@pytest.mark.e2e
def test_cce_loss_and_scorer_targets_on_the_detection_batch():
    """Official CCE (every detection pair, background included) and the Scorer's BCE on the
    pairs ``sgdet.detection_batch`` samples, against numpy; the ground-truth batch's 4 pairs are
    never read."""
    truth = gt_batch([(0, 1, 5), (1, 0, 6)])
    targets = sgdet_ops.detection_batch(
        truth,
        detections(),
        train=True,
        config=SGDetConfig(train_pairs=16, train_fg=8),
        key=jax.random.key(1),
    )
    labels, mask = np.asarray(targets.pair_labels[0]), np.asarray(targets.pair_mask[0])
    assert mask.sum() == 12 and (labels[mask] > 0).sum() == 4  # 4 x 3 pairs, 4 foreground
    base_config = MotifsConfig.small(
        3, 6, task="sgdet", feature_source="roi", detector=DetectorConfig.tiny()
    )
    loss_config = CCEScorerLossConfig(base="motifs", use_cce=True, use_scorer=True)
    loss_fn = jax.jit(make_cce_scorer_loss(loss_config, base_config))
    rng = np.random.default_rng(0)
    outputs = {
        "relation_logits": rng.normal(size=(1, 16, 7)).astype(np.float32),
        "object_logits": rng.normal(size=(1, 5, 4)).astype(np.float32),
        "object_labels": np.ones((1, 5), np.int32),
        "object_scores": np.ones((1, 5), np.float32),
        "scorer_logits": rng.normal(size=(1, 16)).astype(np.float32),
    }
    loss, terms = loss_fn(outputs, {"targets": targets}, truth)
    logits = outputs["relation_logits"][0][mask].astype(np.float64)
    y = labels[mask]
    hardest = [
        max((j for j in range(1, 7) if j != c), key=lambda j: row[j])
        for row, c in zip(logits, y, strict=True)
    ]
    per_pair = np.maximum(logits[np.arange(len(y)), hardest] - logits[np.arange(len(y)), y], 0.0)
    np.testing.assert_allclose(terms["cce"], per_pair.mean(), rtol=1e-5)
    s = outputs["scorer_logits"][0][mask].astype(np.float64)
    q = (y > 0).astype(np.float64)
    bce = -(q * np.log(1 / (1 + np.exp(-s))) + (1 - q) * np.log(1 - 1 / (1 + np.exp(-s))))
    np.testing.assert_allclose(terms["scorer_bce"], bce.mean(), rtol=1e-5)
    object_logits = outputs["object_logits"][0][np.asarray(targets.object_mask[0])]
    object_labels = np.asarray(targets.labels[0])[np.asarray(targets.object_mask[0])]
    log_p = object_logits - np.log(np.exp(object_logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        terms["object_ce"], -log_p[np.arange(4), object_labels].mean(), rtol=1e-5
    )
    assert set(terms) == {"object_ce", "cce", "scorer_bce"}  # official CCE: no relation CE
    np.testing.assert_allclose(
        loss, terms["object_ce"] + 100 * terms["cce"] + terms["scorer_bce"], rtol=1e-5
    )


def graphs_with(boxes=None):
    rng = np.random.default_rng(0)
    graphs = []
    for index, (height, width) in enumerate(SIZES):
        if boxes is None:
            corners = rng.uniform(0, 20, size=(3, 2))
            image_boxes = np.concatenate([corners, corners + 16], axis=1)
        else:
            image_boxes = boxes[index][:3]
        graphs.append(
            SceneGraph(
                f"image{index}",
                width,
                height,
                np.asarray(image_boxes, np.float32),
                np.array([1, 2, 3]),
                np.array([[0, 1, 1], [1, 2, 2], [2, 0, 1]]),
            )
        )
    return graphs


def batch_of(graphs, images):
    config = pipeline.PipelineConfig.evaluation(batch_size=4, max_objects=4, max_pairs=12)
    examples = [
        pipeline.prepare_example(graph, image_index=i, epoch=0, config=config)
        for i, graph in enumerate(graphs)
    ]
    return pipeline.collate(examples, 4).replace(images=images)


@pytest.fixture(scope="module")
def sgdet():
    """Fresh variables and eval outputs on a batch, then the training pass with its loss on a
    batch whose ground truth is the detections (three compiles in all)."""
    base_config = MotifsConfig.small(
        3,
        2,
        hidden_dim=8,
        pooling_dim=8,
        embed_dim=8,
        box_embedding_dim=8,
        feature_hidden_dim=8,
        union_feature_dim=8,
        task="sgdet",
        feature_source="roi",
        detector=DETECTOR,
        sgdet=SGDetConfig(train_pairs=8, train_fg=4),
    )
    model = CCEScorerModel(MotifNet(base_config), scorer_config=ScorerConfig(8, 4))
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, size=(4, 64, 64, 3)).astype(np.float32)
    for image, (height, width) in zip(images, SIZES, strict=True):
        image[height:] = 0.0
        image[:, width:] = 0.0
    first = batch_of(graphs_with(), images)
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

    @jax.jit
    def first_pass(batch):
        (outputs, aux), variables = model.init_with_output(keys, batch)
        detector = FasterRCNN(DETECTOR)
        detector_variables = {
            name: collection["base"]["features"]["detector"]
            for name, collection in variables.items()
            if "detector" in collection.get("base", {}).get("features", {})
        }
        maps = detector.apply(detector_variables, batch.images, method=detector.features)
        return outputs, aux, variables, maps["P5"]

    loss_config = CCEScorerLossConfig(base="motifs", use_cce=True, use_scorer=True)
    loss_fn = make_cce_scorer_loss(loss_config, base_config)

    @jax.jit
    def train_pass(variables, batch):
        outputs, aux = model.apply(
            variables, batch, train=True, rngs={"dropout": jax.random.key(2)}
        )
        _, terms = loss_fn(outputs, aux, batch)
        labels, mask = aux["targets"].pair_labels, aux["targets"].pair_mask
        expected = {
            "cce": cce(
                outputs["relation_logits"],
                labels,
                mask,
                loss_config.margin,
                background=loss_config.background,
                negatives=loss_config.cce_negatives,
            ),
            "scorer_bce": scorer_bce(outputs["scorer_logits"], scorer_targets(labels), mask),
        }
        return terms, expected, labels, mask

    outputs, aux, variables, top = first_pass(first)
    assert np.asarray(outputs["object_mask"]).all()  # score_thresh 0: 4 detections per image
    detections = np.asarray(outputs["boxes"])
    batch = batch_of(graphs_with(detections), images)  # ground truth = the detections
    return {
        "model": model,
        "variables": variables,
        "first": first,
        "outputs": outputs,
        "aux": aux,
        "top": np.asarray(top),
        "batch": batch,
        "train": train_pass(variables, batch),
    }


@pytest.mark.e2e
def test_model_trains_cce_and_the_scorer_on_its_detection_pairs(sgdet):
    terms, expected, labels, mask = sgdet["train"]
    labels, mask = np.asarray(labels), np.asarray(mask)
    assert labels.shape == (4, 8) != np.shape(sgdet["batch"].pair_labels)  # sampled det. pairs
    assert (labels[mask] > 0).sum() >= 4 and (labels[mask] == 0).sum() >= 4
    np.testing.assert_allclose(terms["cce"], expected["cce"], rtol=1e-6)
    np.testing.assert_allclose(terms["scorer_bce"], expected["scorer_bce"], rtol=1e-6)
    assert set(terms) == {"object_ce", "cce", "scorer_bce"}  # official CCE: no relation CE
    assert all(np.isfinite(float(v)) for v in terms.values())


@pytest.mark.e2e
def test_image_feature_is_the_backbone_top_map_averaged_over_each_image(sgdet):
    outputs, top, batch = sgdet["outputs"], sgdet["top"], sgdet["first"]
    assert outputs["image_feature"].shape == (4, DETECTOR.fpn_channels)
    for index, (height, width) in enumerate(SIZES):
        own = top[index, : -(-height // 32), : -(-width // 32)]
        np.testing.assert_allclose(
            outputs["image_feature"][index], own.mean(axis=(0, 1)), rtol=1e-4, atol=1e-6
        )
    np.testing.assert_allclose(
        outputs["image_feature"],
        pooled_image_feature({"P5": top}, batch.image_size, DETECTOR),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.e2e
def test_scorer_ranks_the_models_detection_pairs(sgdet):
    outputs = sgdet["outputs"]
    assert np.asarray(outputs["pair_mask"]).shape == (4, 12)  # 4 x 3 ordered detection pairs
    predict = predict_fn(sgdet["model"], ["scorer", "predicate"])
    found = multi_scorer(predict, sgdet["variables"], make_mesh(jax.devices()[:1]))(sgdet["first"])
    ranked = found["scorer"]
    for key in ("boxes", "pairs", "pair_mask", "object_labels"):
        np.testing.assert_array_equal(ranked[key], outputs[key])
    # Every detection pair's best foreground score is its Scorer score σ(s).
    sigma = 1.0 / (1.0 + np.exp(-np.asarray(outputs["scorer_logits"], np.float64)))
    np.testing.assert_allclose(ranked["predicate_scores"][..., 1:].max(-1), sigma, rtol=1e-4)
    np.testing.assert_allclose(
        found["predicate"]["predicate_scores"],
        jax.nn.softmax(outputs["relation_logits"], axis=-1),
        rtol=1e-5,
    )
    # The evaluator's predictions are those pairs with those scores.
    predictions = detection_predictions(sgdet["first"], ranked, None)
    assert len(predictions) == 4
    for index, prediction in predictions.items():
        np.testing.assert_allclose(
            np.sort(prediction.predicate_scores[:, 1:].max(-1)), np.sort(sigma[index]), rtol=1e-4
        )
    # The Scorer attends over the detection pairs (every row a distribution over the 12).
    weights = np.asarray(sgdet["aux"]["scorer_attention_weights"])
    assert weights.shape == (4, 12, 12)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
