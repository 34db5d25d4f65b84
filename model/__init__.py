"""The SegPIC codec: layers, region-adaptive transform, checkpoints, bitstreams, training and evaluation."""

import warnings

# CompressAI imports torch_geometric, which calls the deprecated `torch.jit.script` at import
# time; the FutureWarning is about their code, not ours, and would open every run's stderr.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
