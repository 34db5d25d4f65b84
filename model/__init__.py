"""The SegPIC codec: layers, region-adaptive transform, checkpoints, bitstreams, training and evaluation."""
