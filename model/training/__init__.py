"""Training SegPIC: configuration, the shard-backed dataset, the loop and its distributed plumbing.

`segpic train` builds a `config.TrainConfig` and calls `trainer.train`. Several GPUs or
nodes: `torchrun --nproc-per-node 8 --no-python segpic train ...` (each process reads
RANK/WORLD_SIZE from the environment), or `segpic train --nproc 2` to spawn local
processes. A run directory holds `checkpoint.pt` (codec + training state, resumable with
`--resume`), `metrics.json` (final means) and `live/` (dvclive series and plots).
"""
