"""Embedding evaluation: rank correlations vs scipy, edge removal rule, retrieval ranks, noise sweep."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from sgg_jax.errors import ConfigError, DataError
from sgg_jax.evaluation import embedding
from sgg_jax.structures import SceneGraph

# ---------------------------------------------------------------------------------------------------
# Correlation coefficients.
# ---------------------------------------------------------------------------------------------------


def _scipy(name, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant inputs: scipy warns and returns NaN
        if name == "kendall":
            return stats.kendalltau(x, y, variant="b").statistic
        if name == "spearman":
            return stats.spearmanr(x, y).statistic
        return stats.pearsonr(x, y).statistic


FNS = {
    "kendall": embedding.kendall_tau_b,
    "spearman": embedding.spearman_rho,
    "pearson": embedding.pearson_r,
}


@pytest.mark.parametrize("name", sorted(FNS))
@pytest.mark.parametrize("n", [2, 3, 7, 40, 301])
def test_coefficients_match_scipy_with_ties(name, n):
    rng = np.random.default_rng(n)
    rows = [
        (rng.integers(0, 3, n), rng.integers(0, 4, n)),  # heavy ties on both sides
        (rng.standard_normal(n), rng.integers(0, 2, n)),  # ties on one side
        (rng.standard_normal(n), rng.standard_normal(n)),  # no ties
        (np.full(n, 2.0), rng.standard_normal(n)),  # constant: undefined
    ]
    x = np.stack([r[0] for r in rows]).astype(np.float64)
    y = np.stack([r[1] for r in rows]).astype(np.float64)
    got = FNS[name](x, y)
    want = [_scipy(name, xi, yi) for xi, yi in zip(x, y, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(got[3])
    # Leading axes are batch axes.
    np.testing.assert_allclose(
        FNS[name](x.reshape(2, 2, n), y.reshape(2, 2, n)), got.reshape(2, 2), equal_nan=True
    )


def test_coefficients_hand_example():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]  # 5 concordant pairs, 1 discordant
    assert embedding.kendall_tau_b(x, y) == pytest.approx(4 / 6)
    assert embedding.spearman_rho(x, y) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert embedding.pearson_r(x, y) == pytest.approx(0.8)
    # Ties: x = (0, 0, 1): 1 x-tie, 2 concordant pairs -> 2 / sqrt(2 * 3).
    assert embedding.kendall_tau_b([0.0, 0.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(
        2 / math.sqrt(6)
    )
    np.testing.assert_array_equal(
        embedding.average_ranks([[3.0, 1.0, 3.0, 2.0, 3.0]]), [[4.0, 1.0, 4.0, 2.0, 4.0]]
    )


def test_kendall_large_vector_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(20_000)
    y = np.round(x + rng.standard_normal(20_000), 1)
    assert embedding.kendall_tau_b(x, y) == pytest.approx(_scipy("kendall", x, y), abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# Rank correlations of embeddings.
# ---------------------------------------------------------------------------------------------------


def test_rank_correlations_match_scipy_rowwise_and_all_pairs():
    rng = np.random.default_rng(1)
    num = 25
    # Discrete embeddings (duplicated rows) give ties among the model similarities; the rounded
    # target gives ties among the targets.
    embeddings = rng.integers(0, 2, (num, 3)).astype(np.float64) + 0.1
    target = np.round(rng.standard_normal((num, num)), 0)
    target = target + target.T
    result = embedding.rank_correlations(embeddings, target)
    model = embedding.cosine_similarity_matrix(embeddings)
    upper = np.triu_indices(num, k=1)
    for name in FNS:
        per_row = [
            _scipy(name, np.delete(model[i], i), np.delete(target[i], i)) for i in range(num)
        ]
        assert result[f"{name}_row"] == pytest.approx(np.nanmean(per_row), abs=1e-12)
        assert result[f"{name}_row_defined"] == int(np.isfinite(per_row).sum())
        assert result[f"{name}_all"] == pytest.approx(
            _scipy(name, model[upper], target[upper]), abs=1e-12
        )
    assert result["num_images"] == num


def test_rank_correlations_hand_example():
    # Unit vectors at 0, 60, 90 and 180 degrees: cosines s01 = .5, s02 = 0, s03 = -1, s12 = .866,
    # s13 = -.5, s23 = 0 (a tie with s02 in row 2).
    embeddings = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0], [-1.0, 0.0]])
    target = np.array([[0, 3, 2, 1], [3, 0, 1, 2], [2, 1, 0, 3], [1, 2, 3, 0]], np.float64)
    result = embedding.rank_correlations(embeddings, target)
    # Row 0: model (.5, 0, -1) vs (3, 2, 1): 1. Row 1: (.5, .866, -.5) vs (3, 1, 2): 1 C, 2 D -> -1/3.
    # Row 2: (0, .866, 0) vs (2, 1, 3): 1 x-tie, 2 D -> -2 / sqrt(2 * 3). Row 3: (-1, -.5, 0) vs
    # (1, 2, 3): 1.
    assert result["kendall_row"] == pytest.approx((1 - 1 / 3 - 2 / math.sqrt(6) + 1) / 4)
    # Spearman row 1: ranks (2, 3, 1) vs (3, 1, 2) -> -1/2; row 2: (1.5, 3, 1.5) vs (2, 1, 3) -> -sqrt(3)/2.
    assert result["spearman_row"] == pytest.approx((1 - 0.5 - math.sqrt(3) / 2 + 1) / 4)
    # All 6 pairs: model (.5, 0, -1, .866, -.5, 0), target (3, 2, 1, 1, 2, 3): 7 C, 4 D, 1 x-tie,
    # 3 y-ties -> 3 / sqrt(14 * 12).
    assert result["kendall_all"] == pytest.approx(3 / math.sqrt(14 * 12))
    assert result["kendall_row_defined"] == 4


def test_rank_correlations_perfect_and_baseline():
    rng = np.random.default_rng(2)
    embeddings = rng.standard_normal((30, 8))
    model = embedding.cosine_similarity_matrix(embeddings)
    result = embedding.rank_correlations(embeddings, 2.0 * model + 1.0)
    for key in ("kendall_row", "spearman_row", "pearson_row", "kendall_all", "spearman_all"):
        assert result[key] == pytest.approx(1.0)
    # Monotone but non-linear target: rank correlations stay 1, Pearson drops below.
    cubed = embedding.rank_correlations(embeddings, model**3)
    assert cubed["kendall_all"] == pytest.approx(1.0)
    assert cubed["pearson_all"] < 1.0 - 1e-3

    baseline = embedding.random_embedding_baseline(30, 8, model, seed=0, repeats=4)
    assert baseline == embedding.random_embedding_baseline(30, 8, model, seed=0, repeats=4)
    assert baseline["repeats"] == 4
    for key in ("kendall_row", "spearman_row", "pearson_row", "kendall_all"):
        assert abs(baseline[key]) < 0.15
        assert baseline[f"{key}_std"] >= 0.0


def test_rank_correlations_bad_inputs():
    embeddings = np.ones((4, 3))
    with pytest.raises(ConfigError, match="'similarity'"):
        embedding.rank_correlations(embeddings, np.ones((4, 5)))
    with pytest.raises(ConfigError, match="'similarity'"):
        embedding.rank_correlations(embeddings, np.ones((3, 3)))
    with pytest.raises(ConfigError, match="'embeddings'"):
        embedding.rank_correlations(np.ones(4), np.ones((4, 4)))
    with pytest.raises(ConfigError, match="'embeddings'"):
        embedding.rank_correlations(np.ones((2, 3)), np.ones((2, 2)))
    bad = np.ones((4, 4))
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="'similarity'"):
        embedding.rank_correlations(embeddings, bad)
    with pytest.raises(DataError, match="'embeddings'"):
        embedding.rank_correlations(np.full((4, 3), np.inf), np.ones((4, 4)))
    with pytest.raises(ConfigError, match="'num'"):
        embedding.random_embedding_baseline(5, 3, np.ones((4, 4)))
    with pytest.raises(ConfigError, match="'repeats'"):
        embedding.random_embedding_baseline(4, 3, np.ones((4, 4)), repeats=0)
    with pytest.raises(ConfigError, match="'y'"):
        embedding.kendall_tau_b([1.0, 2.0], [1.0, 2.0, 3.0])


# ---------------------------------------------------------------------------------------------------
# remove_edges.
# ---------------------------------------------------------------------------------------------------


def _graph(labels, relations, image_id="img"):
    labels = np.asarray(labels, np.int32)
    boxes = (
        np.stack([np.arange(len(labels)) * 10.0 + c for c in range(4)], 1) if len(labels) else []
    )
    return SceneGraph(image_id, 100, 80, boxes, labels, relations, captions=("a cap",))


def test_remove_edges_drops_isolated_objects_and_reindexes():
    # Objects 0..3 (labels 11..14); relations 0 -(1)-> 2 and 0 -(2)-> 3; object 1 has no relation.
    graph = _graph([11, 12, 13, 14], [[0, 2, 1], [0, 3, 2]])
    expected = {
        # removed relation (0, 2, 1): object 2 (and unrelated 1) vanish, (0, 3, 2) -> (0, 1, 2)
        2: ([11, 14], [[0, 1, 2]]),
        # removed relation (0, 3, 2): object 3 vanishes, (0, 2, 1) -> (0, 1, 1)
        1: ([11, 13], [[0, 1, 1]]),
    }
    seen = set()
    for seed in range(20):
        reduced = embedding.remove_edges(graph, 1, np.random.default_rng(seed))
        kept_predicate = int(reduced.relations[0, 2])
        seen.add(kept_predicate)
        labels, relations = expected[kept_predicate]
        np.testing.assert_array_equal(reduced.labels, labels)
        np.testing.assert_array_equal(reduced.relations, relations)
        np.testing.assert_array_equal(reduced.boxes, graph.boxes[np.array(labels) - 11])
        assert (reduced.image_id, reduced.width, reduced.height) == ("img", 100, 80)
        assert reduced.captions == ("a cap",)
    assert seen == {1, 2}  # both outcomes occur


def test_remove_edges_triplets_survive_and_keep_order():
    rng = np.random.default_rng(0)
    labels = np.arange(1, 13)  # unique labels identify objects
    relations = np.array([[s, o, p] for p, (s, o) in enumerate(rng.integers(0, 12, (15, 2)), 1)])
    graph = _graph(labels, relations)
    before = (graph.boxes.copy(), graph.labels.copy(), graph.relations.copy())
    for num_edges in (0, 3, 7, 14):
        reduced = embedding.remove_edges(graph, num_edges, np.random.default_rng(num_edges))
        assert reduced.num_relations == 15 - num_edges
        # Every object of the result is in a remaining relation.
        assert set(reduced.relations[:, :2].ravel()) == set(range(reduced.num_objects))
        triplets = [tuple(reduced.labels[r[:2]]) + (r[2],) for r in reduced.relations]
        original = [tuple(graph.labels[r[:2]]) + (r[2],) for r in graph.relations]
        assert set(triplets) <= set(original)
        predicates = list(reduced.relations[:, 2])
        assert predicates == sorted(predicates)  # original relation order kept
    for array, copy in zip((graph.boxes, graph.labels, graph.relations), before, strict=True):
        np.testing.assert_array_equal(array, copy)  # input untouched


def test_remove_edges_all_removed_and_zero():
    graph = _graph([5, 6, 7], [[0, 1, 3], [1, 2, 4]])
    for num_edges in (2, 3, 50):
        empty = embedding.remove_edges(graph, num_edges, 0)
        assert empty.num_objects == 0 and empty.num_relations == 0
        assert empty.boxes.shape == (0, 4) and empty.relations.shape == (0, 3)
        assert empty.image_id == "img"
    assert embedding.remove_edges(graph, 0, 0) == graph
    # Unrelated objects: dropped by default, kept with keep_unrelated_objects.
    with_unrelated = _graph([5, 6, 7, 8], [[0, 1, 3], [1, 2, 4]])
    assert embedding.remove_edges(with_unrelated, 0, 0) == graph
    kept = embedding.remove_edges(with_unrelated, 5, 0, keep_unrelated_objects=True)
    np.testing.assert_array_equal(kept.labels, [8])
    assert kept.num_relations == 0
    assert embedding.remove_edges(_graph([], []), 3, 0).num_objects == 0


def test_remove_edges_deterministic_with_seed():
    rng = np.random.default_rng(5)
    graph = _graph(np.arange(1, 9), np.c_[rng.integers(0, 8, (12, 2)), np.arange(1, 13)])
    first = embedding.remove_edges(graph, 5, np.random.default_rng(9))
    assert first == embedding.remove_edges(graph, 5, np.random.default_rng(9))
    assert first == embedding.remove_edges(graph, 5, 9)
    others = {tuple(embedding.remove_edges(graph, 5, s).relations[:, 2]) for s in range(10)}
    assert len(others) > 1


def test_remove_edges_bad_inputs():
    graph = _graph([1, 2], [[0, 1, 1]])
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="'num_edges'"):
            embedding.remove_edges(graph, bad, 0)
    broken = _graph([1, 2], [[0, 2, 1]])
    with pytest.raises(DataError, match="'relations'"):
        embedding.remove_edges(broken, 1, 0)


# ---------------------------------------------------------------------------------------------------
# Retrieval metrics.
# ---------------------------------------------------------------------------------------------------

GALLERY = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)
# Every query is close to (1, 0.2): gallery order 0, 1, 3, 2.
QUERIES = np.array([[1.0, 0.1], [1.0, 0.2], [1.0, 0.2], [1.0, 0.2]], np.float32)
TARGETS = np.array([0, 1, 3, 2])  # ranks 1, 2, 3, 4


def test_retrieval_metrics_known_ranks():
    np.testing.assert_array_equal(
        embedding.retrieval_ranks(QUERIES, GALLERY, TARGETS), [1.0, 2.0, 3.0, 4.0]
    )
    metrics = embedding.retrieval_metrics(QUERIES, GALLERY, TARGETS, ks=(1, 2, 5))
    assert metrics["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert (metrics["R@1"], metrics["R@2"], metrics["R@5"]) == (0.25, 0.5, 1.0)
    assert metrics["recall_curve"] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert metrics["num_queries"] == 4
    # A cut-off: ranks beyond it count as infinite (reciprocal rank 0).
    cut = embedding.retrieval_metrics(QUERIES, GALLERY, TARGETS, ks=(1, 2), cutoff=2)
    assert cut["MRR"] == pytest.approx((1 + 1 / 2) / 4)
    assert cut["R@2"] == 0.5
    np.testing.assert_array_equal(
        embedding.retrieval_ranks(QUERIES, GALLERY, TARGETS, cutoff=3), [1.0, 2.0, 3.0, np.inf]
    )


def test_retrieval_ties():
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], np.float32)
    queries = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], np.float32)
    targets = np.array([0, 2, 0, 3])
    # Zero query: every score ties at 0 -> pessimistic rank G. Gallery 0, 1, 3 tie at cosine 1.
    np.testing.assert_array_equal(
        embedding.retrieval_ranks(queries, gallery, targets), [4.0, 4.0, 3.0, 3.0]
    )
    np.testing.assert_array_equal(
        embedding.retrieval_ranks(queries, gallery, targets, ties="index"), [1.0, 3.0, 1.0, 3.0]
    )
    # The tie reaching past the cut-off makes the pessimistic rank unknown -> inf.
    np.testing.assert_array_equal(
        embedding.retrieval_ranks(queries, gallery, targets, cutoff=2), [np.inf] * 4
    )


def test_retrieval_exact_and_scann_agree():
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((60, 8)).astype(np.float32)
    queries = gallery + 0.8 * rng.standard_normal((60, 8)).astype(np.float32)
    targets = np.arange(60)
    exact = embedding.retrieval_ranks(queries, gallery, targets)
    scann = embedding.retrieval_ranks(queries, gallery, targets, backend="scann")
    np.testing.assert_array_equal(exact, scann)
    assert 1 < exact.max() <= 60 and exact.min() == 1
    assert embedding.retrieval_metrics(
        queries, gallery, targets, ks=(1, 5)
    ) == embedding.retrieval_metrics(queries, gallery, targets, ks=(1, 5), backend="scann")


def test_retrieval_bad_inputs():
    with pytest.raises(ConfigError, match="'target_index'"):
        embedding.retrieval_metrics(QUERIES, GALLERY, np.array([0, 1, 2, 4]))
    with pytest.raises(ConfigError, match="'target_index'"):
        embedding.retrieval_metrics(QUERIES, GALLERY, np.array([0, 1]))
    with pytest.raises(ConfigError, match="'query_embeddings'"):
        embedding.retrieval_metrics(np.ones((4, 3)), GALLERY, TARGETS)
    with pytest.raises(DataError, match="'gallery_embeddings'"):
        embedding.retrieval_metrics(QUERIES, np.full((4, 2), np.nan), TARGETS)
    with pytest.raises(ConfigError, match="'ks'"):
        embedding.retrieval_metrics(QUERIES, GALLERY, TARGETS, ks=(1, 3), cutoff=2)
    with pytest.raises(ConfigError, match="'ks'"):
        embedding.retrieval_metrics(QUERIES, GALLERY, TARGETS, ks=(0,))
    with pytest.raises(ConfigError, match="'ties'"):
        embedding.retrieval_metrics(QUERIES, GALLERY, TARGETS, ties="average")
    with pytest.raises(ConfigError, match="'backend'"):
        embedding.retrieval_metrics(QUERIES, GALLERY, TARGETS, backend="faiss")


# ---------------------------------------------------------------------------------------------------
# Noise sweep.
# ---------------------------------------------------------------------------------------------------

NUM_LABELS, NUM_PREDICATES = 8, 8


def _bag_of_labels(graphs):
    """Object-label histogram: deterministic, zero for a graph with no objects."""
    out = np.zeros((len(graphs), NUM_LABELS), np.float32)
    for row, graph in enumerate(graphs):
        np.add.at(out[row], graph.labels - 1, 1.0)
    return out


def _random_graphs(num, seed=0):
    rng = np.random.default_rng(seed)
    graphs = []
    for i in range(num):
        num_objects = int(rng.integers(4, 9))
        num_relations = int(rng.integers(num_objects, 13))
        # A chain touches every object, further relations are random pairs.
        pairs = [(k, k + 1) for k in range(num_objects - 1)]
        while len(pairs) < num_relations:
            pairs.append(tuple(rng.choice(num_objects, 2, replace=False)))
        predicates = rng.integers(1, NUM_PREDICATES + 1, len(pairs))
        relations = np.c_[np.array(pairs), predicates]
        graphs.append(_graph(rng.integers(1, NUM_LABELS + 1, num_objects), relations, f"g{i}"))
    return graphs


def test_noise_sweep_bag_of_labels(tmp_path):
    graphs = _random_graphs(40)
    ms = [0, 1, 2, 4, 8, 13]
    results = embedding.noise_sweep(_bag_of_labels, graphs, Ms=ms, seed=1, ks=(1, 5))
    assert list(results) == ms
    # M = 0: each query is its own gallery graph (every object has a relation), so R@1 = 1. With
    # M = 1 at most one object (a chain end) vanishes; for these graphs the target is still first.
    for m in (0, 1):
        assert results[m]["R@1"] == 1.0 and results[m]["MRR"] == 1.0
    assert results[0]["mean_removed"] == 0.0 and results[4]["mean_removed"] == 4.0
    mrr = [results[m]["MRR"] for m in ms]
    assert all(a >= b for a, b in zip(mrr, mrr[1:], strict=False))  # non-increasing in M
    assert mrr[1] > mrr[3] > mrr[4] > mrr[5]
    assert all(results[m]["R@5"] >= results[m]["R@1"] for m in ms)
    # M = 13 exceeds every graph's <= 12 relations: all queries empty, zero embeddings, and the
    # pessimistic tie rule puts every target at rank G = 40.
    assert results[13]["num_empty_queries"] == 40
    assert results[13]["MRR"] == pytest.approx(1 / 40)
    assert results[13]["R@1"] == 0.0 and results[13]["R@5"] == 0.0

    # Same seed, same result; each M's queries do not depend on the other Ms; the seed matters.
    again = embedding.noise_sweep(_bag_of_labels, graphs, Ms=[8], seed=1, ks=(1, 5))
    assert again[8] == results[8]
    other = embedding.noise_sweep(_bag_of_labels, graphs, Ms=[8], seed=2, ks=(1, 5))
    assert other[8]["MRR"] != results[8]["MRR"]

    path = embedding.plot_noise_sweep(results, tmp_path / "plots" / "noise.png")
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_noise_sweep_bad_inputs(tmp_path):
    graphs = _random_graphs(5)
    with pytest.raises(ConfigError, match="'embed_fn'"):
        embedding.noise_sweep(lambda gs: np.ones((len(gs) + 1, 3)), graphs, Ms=[1])
    with pytest.raises(ConfigError, match="'Ms'"):
        embedding.noise_sweep(_bag_of_labels, graphs, Ms=[-1])
    with pytest.raises(ConfigError, match="'graphs'"):
        embedding.noise_sweep(_bag_of_labels, [], Ms=[1])
    with pytest.raises(ConfigError, match="'results'"):
        embedding.plot_noise_sweep({}, tmp_path / "x.png")
