"""Training SegPIC: configuration, the shard-backed dataset, the loop and its distributed plumbing."""
