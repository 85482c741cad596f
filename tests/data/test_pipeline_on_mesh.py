"""Batches from the pipeline shard over a 4-device mesh and reduce to the same masked means."""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sgg_jax.data import gqa200, pipeline


def test_sharded_batch_masked_mean_equals_host_computation():
    assert jax.device_count() == 4  # tests/conftest.py simulates 4 CPU devices
    graphs, vocab = gqa200.load_bundled("val")
    config = pipeline.PipelineConfig.evaluation(
        batch_size=8, max_objects=24, max_pairs=96, num_predicates=vocab.num_predicates
    )
    batch = next(iter(pipeline.make_loader(graphs[:30], config)))
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    on_devices = jax.device_put(batch, NamedSharding(mesh, P("data")))
    assert on_devices.boxes.sharding.spec == P("data")
    assert len(on_devices.boxes.addressable_shards) == 4

    @jax.jit
    def foreground_fraction(b):
        return pipeline.masked_mean((b.pair_labels > 0).astype(np.float32), b.pair_mask)

    expected = (batch.pair_labels[batch.pair_mask] > 0).mean()
    np.testing.assert_allclose(float(foreground_fraction(on_devices)), expected, rtol=1e-6)
    assert expected > 0
