"""Keep Python's cyclic garbage collector off the hot paths of long-running processes."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Call once start-up is done (the worker's dispatch loops, the API's requests).

    Measured in `notify bench dispatch`: collections took 10-30% of a worker's CPU. What
    start-up built lives as long as the process: frozen, no collection walks it again.
    A send or a request allocates and frees a few hundred containers; collecting by the
    net count only every 20,000 (not 700) keeps young collections rare and cheap, and
    cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 10)
