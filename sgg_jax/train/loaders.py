"""Random-access loaders over in-memory examples, for :func:`sgg_jax.train.loop.fit`.

:class:`EpochBatches` serves batches of example indices shuffled per epoch with
``numpy.random.default_rng([seed, epoch])`` (the last incomplete batch of an epoch is dropped), and
turns each into a batch with a ``select(indices)`` function: the detector's image batches. Batch
``t`` depends only on ``(seed, t)``, so ``iter_from(t)`` of a resumed run yields what an
uninterrupted run would have read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from sgg_jax.errors import ConfigError, check_int


class EpochBatches:
    """Endless batches of ``batch_size`` examples, in a seeded random order per epoch.

    Args:
      num_examples: examples ``0 .. num_examples - 1``.
      batch_size: examples per batch; at most ``num_examples``.
      select: ``select(indices int64[batch_size]) -> batch`` (a pytree of host arrays).
      seed: the order of epoch ``e`` is ``default_rng([seed, e]).permutation(num_examples)``.

    Attributes:
      steps_per_epoch: ``num_examples // batch_size`` (the remainder of an epoch is dropped).
      num_batches: None (endless).
    """

    num_batches = None

    def __init__(
        self, num_examples: int, batch_size: int, select: Callable[[np.ndarray], Any], seed: int
    ):
        check_int("batch_size", batch_size, minimum=1)
        check_int("seed", seed, minimum=0)
        if batch_size > num_examples:
            raise ConfigError("batch_size", f"is larger than the {num_examples} training examples")
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.select = select
        self.seed = int(seed)
        self.steps_per_epoch = self.num_examples // self.batch_size

    def iter_from(self, step: int) -> Iterator[Any]:
        """Batches ``step, step + 1, ...``."""
        order, order_epoch = None, None
        while True:
            epoch, offset = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                order_epoch = epoch
            yield self.select(order[offset * self.batch_size : (offset + 1) * self.batch_size])
            step += 1
