"""Shared pieces of the training tests: a tiny relation classifier, its loss and small loaders.

The model follows the model contract: ``model.apply(variables, batch, train=..., rngs=...)``
returns ``(outputs, aux)`` with ``relation_logits[B, P, C]``, ``object_labels[B, N]``,
``object_scores[B, N]`` and ``aux["relation_embedding"][B, P, H]``. It has dropout (PRNG use in
training) and a masked batch norm (a ``batch_stats`` collection, mutable in training).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgg_jax import boxes as box_ops
from sgg_jax.data import gqa200, pipeline

BATCH_SIZE = 4
MAX_OBJECTS = 12
MAX_PAIRS = 24


class TinyRelationModel(nn.Module):
    """Predicate classifier over (subject, object) box encodings and label embeddings."""

    num_classes: int
    num_predicates: int
    hidden: int = 16
    dropout_rate: float = 0.2

    @nn.compact
    def __call__(self, batch, train: bool):
        image_size = batch.image_size[:, None, :]  # [B, 1, 2]
        box_codes = box_ops.encode_boxes(batch.boxes, image_size)  # [B, N, 9]
        label_codes = nn.Embed(self.num_classes + 1, self.hidden)(batch.labels)  # [B, N, H]
        objects = nn.relu(nn.Dense(self.hidden)(jnp.concatenate([box_codes, label_codes], -1)))
        subjects = jnp.take_along_axis(objects, batch.pairs[..., 0:1], axis=1)  # [B, P, H]
        objects_of_pairs = jnp.take_along_axis(objects, batch.pairs[..., 1:2], axis=1)
        relation = nn.Dense(self.hidden)(jnp.concatenate([subjects, objects_of_pairs], -1))
        relation = nn.BatchNorm(use_running_average=not train, momentum=0.9)(
            relation, mask=batch.pair_mask[..., None]
        )
        relation = nn.relu(relation)
        relation = nn.Dropout(self.dropout_rate, deterministic=not train)(relation)
        relation_logits = nn.Dense(self.num_predicates + 1)(relation)
        outputs = {
            "relation_logits": relation_logits,
            "object_labels": batch.labels,
            "object_scores": batch.object_mask.astype(jnp.float32),
        }
        return outputs, {"relation_embedding": relation}


def relation_cross_entropy(outputs, aux, batch):
    """Cross-entropy over real pairs plus a small embedding-norm term, both masked means."""
    del aux
    log_probs = jax.nn.log_softmax(outputs["relation_logits"], axis=-1)
    nll = -jnp.take_along_axis(log_probs, batch.pair_labels[..., None], axis=-1)[..., 0]
    cross_entropy = pipeline.masked_mean(nll, batch.pair_mask)
    foreground = batch.pair_mask & (batch.pair_labels > 0)
    foreground_ce = pipeline.masked_mean(nll, foreground)
    return cross_entropy, {"relation_ce": cross_entropy, "foreground_ce": foreground_ce}


@functools.cache
def graphs_and_vocab():
    """40 real GQA-200 validation graphs and the vocabulary."""
    graphs, vocab = gqa200.load_bundled("val")
    return tuple(graphs[:40]), vocab


def make_model() -> TinyRelationModel:
    _, vocab = graphs_and_vocab()
    return TinyRelationModel(num_classes=vocab.num_classes, num_predicates=vocab.num_predicates)


def make_train_loader(seed: int = 0, batch_size: int = BATCH_SIZE) -> pipeline.SceneGraphLoader:
    """A shuffled, repeating training loader over the 40 graphs (deterministic for ``seed``)."""
    graphs, vocab = graphs_and_vocab()
    config = pipeline.PipelineConfig(
        batch_size=batch_size,
        max_objects=MAX_OBJECTS,
        max_pairs=MAX_PAIRS,
        max_fg=8,
        seed=seed,
        num_predicates=vocab.num_predicates,
        read_threads=0,
        prefetch_batches=0,
    )
    return pipeline.make_loader(list(graphs), config)
