"""Sizes past which a number is a typo (1e12 classes, a million channels), not a network of this
field: refused with its key instead of ending in the allocator. Light on purpose: the CLI's argument
checks use it before anything heavy is imported."""

MAX_CLASSES = 100_000
MAX_CHANNELS = 16_384
MAX_SIDE = 4_096
MAX_DEPTH = 1_000
MAX_CELL_NODES = 64  # also the most a cell's stem may multiply its width by
MAX_BATCH = 65_536
MAX_THREADS = 1_024
MAX_RUNS = 1_000_000
