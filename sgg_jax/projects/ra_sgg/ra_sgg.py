"""RA-SGG phase 2: retrieval-augmented multi-label targets for every training batch.

:class:`RetrievalAugmenter` is the ``batch_transform`` of :func:`sgg_jax.train.train`. Before update
``t`` it

1. refreshes the :class:`~sgg_jax.projects.ra_sgg.memory_bank.MemoryBank` with the current model when
   due (at the first update of the run, then every ``bank_refresh_steps`` updates);
2. embeds the batch's foreground pairs with the current model (one jitted forward in eval mode over
   the first ``max_fg`` pair slots, where the pipeline puts the foreground; over all pairs when
   background relabelling is on);
3. retrieves the ``K`` most similar bank entries of each foreground relation on the host, excluding
   the relation's own entry;
4. selects multi-label candidates by label inconsistency, samples their augmented predicate (by
   default from the inverse-propensity weights), draws ``λ`` and writes
   ``soft_targets = λ·onehot(gt) + (1 − λ)·onehot(aug)`` (one-hot for the rest, ``onehot(0)`` for
   background pairs) into the batch, which :func:`sgg_jax.relation.losses.ra_sgg_losses` trains on.

``variant="official"`` follows the official code instead (``KanghoonYoon/torch-rasgg`` at e8be01b,
``ReTAGPENet.forward``; :func:`sgg_jax.projects.ra_sgg.augment.official_augment` cites the lines):

* queries are the relation embeddings of the training forward pass itself: every real pair of the
  batch, foreground and background, embedded in train mode with the dropout key the update will
  use (the loop passes it, ``wants_dropout_key``), so they equal the step's own ``r``
  (``query_rels = rel_rep``, line 625);
* the search ranks K + 1 bank entries and drops the first (``ret_idx[1:K+1]``, line 649), whatever
  it is;
* selection, background relabelling and sampling by the official rule over the dataset's tail set
  (:mod:`sgg_jax.projects.ra_sgg.tail_sets`), λ ~ Beta(α, β) for every pair;
* with ``bank="official"`` the bank is built once, by the caller, from the phase-1 model and never
  refreshed (``bank_refresh_steps`` is ignored).

From pixels (``feature_source="roi"``) the batch reaching the augmenter already holds its images
(the experiment composes the image transform before it, :class:`sgg_jax.train.ComposedTransform`),
and the bank embeds its own batches with the same transform. In SGDet (``detection=True``) the
relations are pairs of the detector's detections, sampled inside the model with the update's
dropout key (:func:`sgg_jax.relation.sgdet.detection_batch`); so, for both variants, the queries
are the update's own pairs embedded by the training forward pass with that key
(:func:`make_train_embed_fn` ``with_targets=True``, which also returns their predicates), as the
official code does in every mode (``query_rels = rel_rep`` over the sampled
``rel_pair_idxs``, ``roi_relation_predictors.py``:625, sampled by ``detect_relsample`` in SGDet,
``relation_head.py``:61). The soft targets are f32[B, P_train, C] over those pairs; the loss moves
them to the detection batch (:func:`sgg_jax.relation.losses.targets_of`). The paper variant's
self-exclusion uses the entry ``(image, subject detection, object detection, predicate)`` of the
:class:`~sgg_jax.projects.ra_sgg.memory_bank.DetectionMemoryBank`. An empty SGDet bank (no
detection matches a ground-truth relation, e.g. an untrained detector) leaves the one-hot targets
(metric ``ra/bank_empty``).

With several processes (:mod:`sgg_jax.distributed`) each process transforms its own batch: the
embedding functions return the process's rows of the jitted forward over the global mesh, and the
memory bank is sharded by process (:mod:`sgg_jax.projects.ra_sgg.memory_bank`), so a refresh and
every search are collectives that each process enters at every update (the training loop calls
the transform at every update in every process; the background search runs even for a batch
without background pairs).

With ``retrieval="in_step"`` (``--retrieval=in_step``) the experiment uses
:class:`sgg_jax.projects.ra_sgg.in_step.InStepRetrieval` and its loss instead of this transform: the
search, the rules and the soft targets run inside the jitted train step on the training forward's
own embeddings (PredCls / SGCls).

Randomness is ``numpy.random.default_rng((seed, step))``, so a step's targets depend only on the
seed, the step and the model. A resumed run rebuilds the bank from the restored model at its first
update, which is the same bank as an uninterrupted run only when the resume step is a refresh step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgg_jax.distributed import allgather_rows, process_count, process_index
from sgg_jax.errors import ConfigError, check_int, is_finite_number
from sgg_jax.projects.ra_sgg import augment as augment_lib
from sgg_jax.projects.ra_sgg.memory_bank import MemoryBank, refresh_due
from sgg_jax.projects.ra_sgg.tail_sets import rarest_predicates
from sgg_jax.structures import SceneGraphBatch
from sgg_jax.train.mesh import batch_sharding, process_local

LAMBDA_MODES = ("beta", "fixed")
BANKS = ("full", "official")
RETRIEVALS = ("host", "in_step")


@dataclasses.dataclass(frozen=True)
class RASGGConfig:
    """Options of the retrieval-augmented phase (paper defaults; official-code variants as options).

    Attributes:
      num_neighbours: K retrieved per relation (paper: 20 PredCls, 10 SGCls).
      tau: label-inconsistency threshold τ; ``d ≥ τ`` selects a multi-label candidate.
      select: False augments every foreground relation (ablation "w/o selection").
      weighting: ``"inverse_propensity"`` (paper), ``"class_balanced"`` (official code) or
        ``"uniform"`` (ablation "w/o IPSS": the raw retrieved histogram).
      normalize_propensity: normalise the inverse propensities to sum 1 before the softmax (see
        :mod:`sgg_jax.projects.ra_sgg.augment`).
      beta: β of the class-balanced weights.
      tail_only: only relabel toward predicates rarer than the ground truth.
      relabel_background: also relabel one background pair per image whose neighbours carry tail
        predicates (official code).
      background_rule: ``"any"`` | ``"majority"`` neighbours with tail predicates.
      tail_fraction: the rarest ``tail_fraction`` of predicates by training count form the tail
        for ``relabel_background``.
      lambda_mode: ``"beta"`` draws λ ~ Beta(lambda_alpha, lambda_beta) per relation (official
        code); ``"fixed"`` uses ``lambda_value``.
      lambda_alpha, lambda_beta, lambda_value: the λ parameters.
      bank_refresh_steps: rebuild the memory bank every this many updates (0 = only at the start).
      seed: seed of the sampling.
      variant: ``"paper"`` (the paper's equations, the fields above) or ``"official"`` (the official
        code's rule: ``threshold``, ``tail_ids``, class-balanced sampling; module docstring).
      threshold: the official confidence threshold (``RASGG.THRESHOLD``, 0.3).
      tail_ids: the tail predicate ids of the official rule (None: the rarest ``tail_fraction``).
      bank: ``"full"`` (every training relation, refreshed with the model) or ``"official"`` (built
        once from the phase-1 model, at most ``memory_size`` entries per triplet, never
        refreshed).
      memory_size: the official bank's cap per (subject class, object class, predicate) triplet
        (``RASGG.MEMORY_SIZE``, 8 in the official scripts).
      retrieval: ``"host"`` (:class:`RetrievalAugmenter`: a second forward and the search on the
        host) or ``"in_step"`` (exact search, selection and soft targets inside the jitted train
        step on a bank held on the devices: :mod:`sgg_jax.projects.ra_sgg.in_step`).
    """

    num_neighbours: int = 20
    tau: float = 0.5
    select: bool = True
    weighting: str = "inverse_propensity"
    normalize_propensity: bool = True
    beta: float = 0.99999
    tail_only: bool = False
    relabel_background: bool = False
    background_rule: str = "any"
    tail_fraction: float = 1 / 3
    lambda_mode: str = "beta"
    lambda_alpha: float = 20.0
    lambda_beta: float = 5.0
    lambda_value: float = 0.8
    bank_refresh_steps: int = 0
    seed: int = 0
    variant: str = "paper"
    threshold: float = 0.3
    tail_ids: tuple[int, ...] | None = None
    bank: str = "full"
    memory_size: int = 8
    retrieval: str = "host"

    def __post_init__(self):
        if self.retrieval not in RETRIEVALS:
            raise ConfigError("retrieval", f"must be one of {RETRIEVALS}, got {self.retrieval!r}")
        if self.variant not in augment_lib.VARIANTS:
            raise ConfigError(
                "variant", f"must be one of {augment_lib.VARIANTS}, got {self.variant!r}"
            )
        if self.bank not in BANKS:
            raise ConfigError("bank", f"must be one of {BANKS}, got {self.bank!r}")
        augment_lib.check_threshold(self.threshold)
        check_int("memory_size", self.memory_size, minimum=1)
        if self.tail_ids is not None:
            augment_lib.check_tail_ids(self.tail_ids)
        if self.variant == "official" and self.weighting not in ("class_balanced", "uniform"):
            raise ConfigError(
                "weighting",
                "the official variant samples 'class_balanced' (or 'uniform' for w/o IPSS), "
                f"got {self.weighting!r}",
            )
        check_int("num_neighbours", self.num_neighbours, minimum=1)
        check_int("bank_refresh_steps", self.bank_refresh_steps, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if not is_finite_number(self.tau) or self.tau < 0:
            raise ConfigError("tau", f"must be a finite number >= 0, got {self.tau!r}")
        if self.weighting not in augment_lib.WEIGHTINGS:
            raise ConfigError(
                "weighting", f"must be one of {augment_lib.WEIGHTINGS}, got {self.weighting!r}"
            )
        if self.background_rule not in augment_lib.BACKGROUND_RULES:
            raise ConfigError(
                "background_rule",
                f"must be one of {augment_lib.BACKGROUND_RULES}, got {self.background_rule!r}",
            )
        if self.lambda_mode not in LAMBDA_MODES:
            raise ConfigError(
                "lambda_mode", f"must be one of {LAMBDA_MODES}, got {self.lambda_mode!r}"
            )
        if not is_finite_number(self.beta) or not 0 < self.beta < 1:
            raise ConfigError("beta", f"must lie in (0, 1), got {self.beta!r}")
        if not is_finite_number(self.tail_fraction) or not 0 < self.tail_fraction <= 1:
            raise ConfigError("tail_fraction", f"must lie in (0, 1], got {self.tail_fraction!r}")
        for name in ("lambda_alpha", "lambda_beta"):
            value = getattr(self, name)
            if not is_finite_number(value) or value <= 0:
                raise ConfigError(name, f"must be a positive number, got {value!r}")
        if not is_finite_number(self.lambda_value) or not 0 <= self.lambda_value <= 1:
            raise ConfigError("lambda_value", f"must lie in [0, 1], got {self.lambda_value!r}")


tail_predicates = rarest_predicates  # the name this module exported before tail_sets existed


def make_embed_fn(model: Any, mesh: Any, shard: Callable) -> Callable:
    """``embed(variables, host_batch) -> float32[B, P, H]``: ``aux["relation_embedding"]``, eval mode.

    With several processes every process passes its own batch and gets its own rows back (the
    jitted forward runs once over the global batch).

    Args:
      model: a module returning ``(outputs, aux)`` with ``aux["relation_embedding"]``.
      mesh: the device mesh.
      shard: ``shard(batch, mesh)`` placing a host batch on the mesh.

    With several processes the result holds this process's rows (those of its ``host_batch``).
    """

    @jax.jit
    def embed(variables, batch):
        _, aux = model.apply(variables, batch, train=False)
        return jax.lax.with_sharding_constraint(aux["relation_embedding"], batch_sharding(mesh))

    def run(variables, batch: SceneGraphBatch) -> np.ndarray:
        return process_local(embed(variables, shard(batch, mesh)))

    return run


def make_train_embed_fn(
    model: Any, mesh: Any, shard: Callable, *, with_targets: bool = False
) -> Callable:
    """``embed(variables, host_batch, dropout_key) -> float32[B, P, H]`` in train mode.

    The relation embeddings of the training forward pass: with the update's dropout key and the same
    batch they equal the ``r`` the update computes (mutable collections such as batch statistics
    are computed and discarded). In SGDet the pairs are sampled inside the model from the same key
    (the ``"dropout"`` rng), so they are the update's pairs too.

    Args:
      model: a module returning ``(outputs, aux)`` with ``aux["relation_embedding"]``.
      mesh: the device mesh.
      shard: ``shard(batch, mesh)`` placing a host batch on the mesh.
      with_targets: also return the pairs the embeddings belong to: ``(embeddings, {"pairs"
        int[B, P, 2], "pair_labels" int[B, P], "pair_mask" bool[B, P], "boxes" f32[B, N, 4]})``,
        those of the model's
        ``aux["targets"]`` (SGDet: the detection batch with its assigned predicates), else the
        input batch's.
    """

    @jax.jit
    def embed(variables, batch, dropout_key):
        mutable = sorted(k for k in variables if k != "params")
        rngs = {"dropout": dropout_key}
        if mutable:
            (_, aux), _ = model.apply(variables, batch, train=True, rngs=rngs, mutable=mutable)
        else:
            _, aux = model.apply(variables, batch, train=True, rngs=rngs)
        if not with_targets:
            return jax.lax.with_sharding_constraint(aux["relation_embedding"], batch_sharding(mesh))
        targets = aux.get("targets", batch)
        pairs = {
            "pairs": targets.pairs,
            "pair_labels": targets.pair_labels,
            "pair_mask": targets.pair_mask,
            "boxes": targets.boxes,
        }
        return jax.lax.with_sharding_constraint(
            (aux["relation_embedding"], pairs), batch_sharding(mesh)
        )

    def run(variables, batch: SceneGraphBatch, dropout_key):
        found = process_local(embed(variables, shard(batch, mesh), dropout_key))
        if not with_targets:
            return found
        return found[0], dict(found[1])

    return run


def make_detection_bank_fn(model: Any, mesh: Any, shard: Callable, *, budget: int) -> Callable:
    """``bank_fn(variables, host_batch) -> dict``: the SGDet bank's matched detection pairs.

    One eval-mode forward over every ordered pair of the detections
    (:func:`sgg_jax.relation.sgdet.detection_batch` at inference), then, inside the same jit, the
    training matching rules of :mod:`sgg_jax.relation.sgdet` against the batch's ground truth:
    detections take the labels of the ground-truth boxes they overlap (``assign_labels``), a pair is
    foreground when it matches a ground-truth relation (``pair_labels_of_matches``, with a fixed key
    where a pair matches several). Each image keeps its first ``budget`` foreground pairs.

    Args:
      model: an SGDet relation model (``model.config.sgdet``; outputs ``boxes``, ``object_mask``,
        ``pairs``, ``pair_mask``; ``aux["relation_embedding"]``).
      mesh, shard: as :func:`make_embed_fn`.
      budget: most pairs per image.

    Returns:
      ``bank_fn`` returning host arrays ``embedding`` f32[B, K, H], ``subject``, ``object``
      (detection indices), ``subject_class``, ``object_class``, ``predicate`` int[B, K] and
      ``mask`` bool[B, K] (:class:`~sgg_jax.projects.ra_sgg.memory_bank.DetectionMemoryBank`).
    """
    from sgg_jax.relation import sgdet

    config = sgdet.SGDetConfig.from_mapping(getattr(model.config, "sgdet", None))
    check_int("budget", budget, minimum=1)

    @jax.jit
    def bank_fn(variables, batch):
        outputs, aux = model.apply(variables, batch, train=False)
        num_pairs = outputs["pairs"].shape[1]
        keep = min(budget, num_pairs)

        def one_image(boxes, mask, gt_boxes, gt_labels, gt_mask, gt_pairs, gt_pl, gt_pm, pairs, pm):
            labels, is_match = sgdet.assign_labels(
                boxes, mask, gt_boxes, gt_labels, gt_mask, config
            )
            table = sgdet.pair_labels_of_matches(
                is_match, gt_pairs, gt_pl, gt_pm, jax.random.key(0)
            )
            predicate = jnp.where(pm, table[pairs[:, 0], pairs[:, 1]], 0)
            order = jnp.where(predicate > 0, num_pairs - jnp.arange(num_pairs), 0)
            score, index = jax.lax.top_k(order, keep)  # the first foreground pairs, in order
            chosen = pairs[index]
            return (
                index,
                chosen[:, 0],
                chosen[:, 1],
                labels[chosen[:, 0]],
                labels[chosen[:, 1]],
                predicate[index],
                score > 0,
            )

        index, subject, obj, subject_class, object_class, predicate, valid = jax.vmap(one_image)(
            jnp.asarray(outputs["boxes"], jnp.float32),
            jnp.asarray(outputs["object_mask"], bool),
            jnp.asarray(batch.boxes, jnp.float32),
            jnp.asarray(batch.labels, jnp.int32),
            jnp.asarray(batch.object_mask, bool),
            jnp.asarray(batch.pairs, jnp.int32),
            jnp.asarray(batch.pair_labels, jnp.int32),
            jnp.asarray(batch.pair_mask, bool),
            jnp.asarray(outputs["pairs"], jnp.int32),
            jnp.asarray(outputs["pair_mask"], bool),
        )
        embedding = jnp.take_along_axis(aux["relation_embedding"], index[..., None], axis=1)
        found = {
            "embedding": embedding,
            "subject": subject,
            "object": obj,
            "subject_class": subject_class,
            "object_class": object_class,
            "predicate": predicate,
            "mask": valid,
        }
        return jax.lax.with_sharding_constraint(found, batch_sharding(mesh))

    def run(variables, batch: SceneGraphBatch) -> dict[str, np.ndarray]:
        return process_local(bank_fn(variables, shard(batch, mesh)))

    return run


def _global_fields(batch: SceneGraphBatch) -> SceneGraphBatch:
    """The fields the augmentation reads, of the global batch (every process's rows, in process
    order); the batch itself with one process."""
    if process_count() == 1:
        return batch
    names = ("pairs", "pair_labels", "pair_mask", "graph_mask", "image_index")
    return batch.replace(
        **{name: allgather_rows(np.asarray(getattr(batch, name))) for name in names}
    )


def _own_rows(values: np.ndarray, local_batch: SceneGraphBatch) -> np.ndarray:
    """This process's rows of global-batch ``values`` (all of them with one process)."""
    size = np.asarray(local_batch.pair_labels).shape[0]
    start = process_index() * size
    return values[start : start + size]


class RetrievalAugmenter:
    """The RA-SGG batch transform (module docstring).

    Several processes: each embeds its own rows (the jitted forward spans every process), then
    the fields the rule reads (pairs, labels, masks, image indices: ints) and the query
    embeddings are gathered, so every process searches, selects and draws on the global batch
    with the same generator as one process would, and keeps its own rows of the soft targets.

    Args:
      bank: the memory bank over the training split of the loader.
      embed: ``embed(variables, host_batch) -> float32[B, P, H]`` (:func:`make_embed_fn`).
      predicate_counts: int[P+1] training counts (the propensities).
      config: :class:`RASGGConfig`.
      foreground_slots: the pipeline's ``max_fg``: foreground pairs occupy the first this many
        slots of a training image, so only they are embedded (None = embed every slot).
      train_embed: ``train_embed(variables, host_batch, dropout_key)`` (:func:`make_train_embed_fn`),
        required by ``variant="official"``, whose queries come from the training forward pass.
      detection: SGDet: the relations are the detection pairs the model samples in its training
        forward pass; ``train_embed`` (built ``with_targets=True``) gives the queries and the
        detection batch's pairs, predicates and mask, and the soft targets are f32[B, P_train, C]
        over those pairs (:func:`sgg_jax.relation.losses.targets_of` moves them to the detection
        batch). Both variants use these train-mode queries (module docstring).
    """

    def __init__(
        self,
        bank: MemoryBank,
        embed: Callable[[Mapping[str, Any], SceneGraphBatch], np.ndarray],
        predicate_counts: np.ndarray,
        config: RASGGConfig,
        *,
        foreground_slots: int | None = None,
        train_embed: Callable[[Mapping[str, Any], SceneGraphBatch, Any], Any] | None = None,
        detection: bool = False,
    ):
        counts = np.asarray(predicate_counts, np.int64)
        if counts.shape != (bank.num_predicates + 1,):
            raise ConfigError(
                "predicate_counts",
                f"expected {bank.num_predicates + 1} counts, got shape {counts.shape}",
            )
        self.bank = bank
        self.embed = embed
        self.counts = counts
        self.config = config
        self.foreground_slots = foreground_slots
        if config.tail_ids is not None:
            self.tail = augment_lib.check_tail_ids(config.tail_ids, bank.num_predicates)
        else:
            self.tail = rarest_predicates(counts, config.tail_fraction)
        self.official = config.variant == "official"
        if self.official and train_embed is None:
            raise ConfigError("variant", "'official' needs train_embed (the training forward pass)")
        self.detection = bool(detection)
        if self.detection and train_embed is None:
            raise ConfigError("task", "sgdet needs train_embed (the training forward pass)")
        self.train_embed = train_embed
        # The training loop passes the update's dropout key to transforms that ask for it.
        self.wants_dropout_key = self.official or self.detection
        self._refreshed_at: int | None = None
        self._warned_empty = False
        self.totals = {"foreground": 0, "selected": 0, "augmented": 0, "background_relabelled": 0}

    def _refresh_due(self, step: int) -> bool:
        return refresh_due(self.config, self.bank, self._refreshed_at, step)

    def __call__(
        self,
        variables: Mapping[str, Any],
        step: int,
        batch: SceneGraphBatch,
        dropout_key: Any = None,
    ) -> tuple[SceneGraphBatch, dict[str, float]]:
        """Soft targets for update ``step`` (1-based) from the model ``variables`` before it.

        Args:
          variables: the model variables entering update ``step``.
          step: the update number.
          batch: the host training batch.
          dropout_key: the update's dropout key (``variant="official"`` only).

        Returns:
          ``(batch with soft_targets, metrics)``; metrics ``ra/selected_fraction``,
          ``ra/augmented_fraction`` (of the batch's foreground relations),
          ``ra/background_relabelled``, ``ra/search_seconds`` and, after a refresh, ``bank/*``.
        """
        config = self.config
        metrics: dict[str, float] = {}
        if self._refresh_due(step):
            metrics.update(self.bank.refresh(lambda b: self.embed(variables, b)))
            self._refreshed_at = step - 1
            if self.bank.size == 0 and not self._warned_empty:
                print(
                    "RA-SGG: the memory bank is empty (no detection pair matches a ground-truth "
                    "relation); batches keep their one-hot targets until a refresh fills it"
                )
                self._warned_empty = True
        if self.bank.size == 0:
            metrics["ra/bank_empty"] = 1.0
            return batch, metrics
        rng = np.random.default_rng((config.seed, 0xA5, int(step)))
        if self.official:
            return self._official(variables, batch, dropout_key, rng, metrics)
        local_batch, batch = batch, _global_fields(batch)
        graph_mask = np.asarray(batch.graph_mask)[:, None]
        num_classes = self.bank.num_predicates + 1
        if self.detection:  # the update's own detection pairs, embedded in train mode
            embeddings, batch_pairs, pair_labels, pair_mask = self._training_pairs(
                variables, local_batch, dropout_key
            )
            pair_mask = pair_mask & graph_mask
            foreground = pair_mask & (pair_labels > 0)
            slots = pair_labels.shape[1]
        else:
            batch_pairs = np.asarray(batch.pairs)
            pair_labels = np.asarray(batch.pair_labels)
            pair_mask = np.asarray(batch.pair_mask) & graph_mask
            foreground = pair_mask & (pair_labels > 0)
            slots = pair_labels.shape[1]
            if not config.relabel_background and self.foreground_slots is not None:
                slots = min(slots, self.foreground_slots)
                if foreground[:, slots:].any():
                    raise ConfigError(
                        "max_fg", "foreground pairs found beyond the first max_fg slots of an image"
                    )
            view = local_batch.replace(
                pairs=np.asarray(local_batch.pairs)[:, :slots],
                pair_labels=np.asarray(local_batch.pair_labels)[:, :slots],
                pair_mask=np.asarray(local_batch.pair_mask)[:, :slots],
                soft_targets=None,
            )
            embeddings = allgather_rows(self.embed(variables, view))
        start = time.perf_counter()
        rows, columns = np.nonzero(foreground[:, :slots])
        image_index = np.asarray(batch.image_index)[rows]
        pairs = batch_pairs[rows, columns]
        gt = pair_labels[rows, columns]
        own = self.bank.entry_ids(image_index, pairs[:, 0], pairs[:, 1], gt)
        k = config.num_neighbours
        local_size = np.asarray(local_batch.pair_labels).shape[0]
        neighbour_ids = self._search(rows, embeddings[rows, columns], k, local_size, own)
        neighbours = self.bank.predicates_of(neighbour_ids)
        result = augment_lib.augment(
            gt,
            neighbours,
            self.counts,
            rng,
            tau=config.tau,
            weighting=config.weighting,
            beta=config.beta,
            tail_only=config.tail_only,
            select=config.select,
            normalize_propensity=config.normalize_propensity,
        )
        targets = np.zeros((*pair_labels.shape, num_classes), np.float32)
        targets[..., 0] = pair_mask  # background pairs: onehot(0); padding: zeros
        targets[rows, columns] = augment_lib.multi_prototype_targets(
            gt, result.augmented, num_classes, self._lambdas(rng, gt.shape[0])
        )
        relabelled = 0
        if config.relabel_background:
            background = pair_mask & (pair_labels == 0)
            bg_rows, bg_columns = np.nonzero(background)
            # Searched even without background pairs: with several processes the search is a
            # collective every process enters.
            bg_ids = self._search(bg_rows, embeddings[bg_rows, bg_columns], k, local_size)
            if bg_rows.size:
                new = augment_lib.relabel_background(
                    self.bank.predicates_of(bg_ids),
                    bg_rows.tolist(),
                    self.tail,
                    self.counts,
                    rng,
                    rule=config.background_rule,
                    weighting=config.weighting,
                    beta=config.beta,
                    normalize_propensity=config.normalize_propensity,
                )
                changed = new > 0
                relabelled = int(changed.sum())
                targets[bg_rows[changed], bg_columns[changed]] = (
                    augment_lib.multi_prototype_targets(
                        np.zeros(relabelled, np.int64),
                        new[changed],
                        num_classes,
                        self._lambdas(rng, relabelled),
                    )
                )
        num_foreground = int(gt.shape[0])
        augmented = int((result.augmented != gt).sum())
        self.totals["foreground"] += num_foreground
        self.totals["selected"] += int(result.selected.sum())
        self.totals["augmented"] += augmented
        self.totals["background_relabelled"] += relabelled
        metrics.update(
            {
                "ra/selected_fraction": result.selected_fraction,
                "ra/augmented_fraction": augmented / max(num_foreground, 1),
                "ra/background_relabelled": float(relabelled),
                "ra/search_seconds": time.perf_counter() - start,
            }
        )
        return local_batch.replace(soft_targets=_own_rows(targets, local_batch)), metrics

    def _official(self, variables, batch, dropout_key, rng, metrics):
        """The official rule over every real pair of the batch (module docstring)."""
        if dropout_key is None:
            raise ConfigError("variant", "'official' needs the update's dropout key")
        config = self.config
        num_classes = self.bank.num_predicates + 1
        if self.detection:
            embeddings, _, pair_labels, pair_mask = self._training_pairs(
                variables, batch, dropout_key
            )
        else:
            pair_labels = allgather_rows(np.asarray(batch.pair_labels))
            pair_mask = allgather_rows(np.asarray(batch.pair_mask))
            embeddings = allgather_rows(
                self.train_embed(variables, batch.replace(soft_targets=None), dropout_key)
            )
        pair_mask = pair_mask & allgather_rows(np.asarray(batch.graph_mask))[:, None]
        start = time.perf_counter()
        rows, columns = np.nonzero(pair_mask)  # image by image, in pair order
        labels = pair_labels[rows, columns]
        k = config.num_neighbours
        local_size = np.asarray(batch.pair_labels).shape[0]
        ranked = self._search(rows, embeddings[rows, columns], k + 1, local_size)
        neighbours = self.bank.predicates_of(ranked[:, 1:])  # ret_idx[1:K+1]
        result = augment_lib.official_augment(
            labels,
            neighbours,
            rows.tolist(),
            self.tail,
            self.counts,
            rng,
            threshold=config.threshold,
            beta=config.beta,
            select=config.select,
            weighting=config.weighting,
        )
        targets = np.zeros((*pair_labels.shape, num_classes), np.float32)
        targets[rows, columns] = augment_lib.multi_prototype_targets(
            labels, result.augmented, num_classes, self._lambdas(rng, labels.shape[0])
        )
        foreground = labels > 0
        num_foreground = int(foreground.sum())
        selected = int((result.selected & foreground).sum())
        augmented = int((foreground & (result.augmented != labels)).sum())
        relabelled = int((~foreground & (result.augmented > 0)).sum())
        self.totals["foreground"] += num_foreground
        self.totals["selected"] += selected
        self.totals["augmented"] += augmented
        self.totals["background_relabelled"] += relabelled
        metrics.update(
            {
                "ra/selected_fraction": selected / max(num_foreground, 1),
                "ra/augmented_fraction": augmented / max(num_foreground, 1),
                "ra/background_relabelled": float(relabelled),
                "ra/search_seconds": time.perf_counter() - start,
            }
        )
        return batch.replace(soft_targets=_own_rows(targets, batch)), metrics

    def _search(self, rows, queries, k, local_size, exclude_ids=None) -> np.ndarray:
        """Neighbour ids of the global batch's queries (``rows``: their global batch rows).

        With several processes each searches its own rows (the bank's search is a collective
        over the processes' queries) and the results are gathered back into the global order.
        """
        if process_count() == 1:
            return self.bank.search(queries, k, exclude_ids)[0]
        start = process_index() * local_size
        mine = (rows >= start) & (rows < start + local_size)
        ids, _ = self.bank.search(
            queries[mine], k, None if exclude_ids is None else exclude_ids[mine]
        )
        return allgather_rows(ids)

    def _training_pairs(self, variables, batch, dropout_key):
        """SGDet: ``(embeddings, pairs, pair_labels, pair_mask)`` of the detection pairs the
        update samples (same variables, batch and dropout key as the update); the global batch's
        with several processes."""
        if dropout_key is None:
            raise ConfigError("task", "sgdet queries need the update's dropout key")
        embeddings, targets = self.train_embed(
            variables, batch.replace(soft_targets=None), dropout_key
        )
        return (
            allgather_rows(np.asarray(embeddings)),
            allgather_rows(np.asarray(targets["pairs"])),
            allgather_rows(np.asarray(targets["pair_labels"])),
            allgather_rows(np.asarray(targets["pair_mask"], bool)),
        )

    def _lambdas(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.config.lambda_mode == "fixed":
            return np.full(size, self.config.lambda_value)
        return augment_lib.sample_lambda(
            rng, size, self.config.lambda_alpha, self.config.lambda_beta
        )

    def summary(self) -> dict[str, float]:
        """Fractions over every batch seen so far: selected, augmented (of foreground relations)."""
        total = max(self.totals["foreground"], 1)
        return {
            "foreground_relations": float(self.totals["foreground"]),
            "selected_fraction": self.totals["selected"] / total,
            "augmented_fraction": self.totals["augmented"] / total,
            "background_relabelled": float(self.totals["background_relabelled"]),
        }
