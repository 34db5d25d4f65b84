"""Evaluation of trained codecs on an image set: real bitstreams, rate, quality and timing.

`images` finds the images (a folder of files or image shards), `quality` holds the
distortion metrics, `measurements` the two ways of measuring one image (coded to a real
`.segpic` file, or estimated from likelihoods) and `run` the loop over checkpoints that
writes the results JSON.
"""
