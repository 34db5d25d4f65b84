"""Data stage: image sources, class-agnostic mask generators, Parquet shards, and the `segpic` CLI."""
