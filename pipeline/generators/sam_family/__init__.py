"""The SAM family of mask generators: `sam` (SAM 1), `sam2` (SAM 2.1) and `sam3` (SAM 3), one folder each.

What all three share sits here: `weights` (the official checkpoints, their download and the
sha256 cache), `checkpoints` (which network and size a file holds, read from its tensors),
`checkpoint_generator` (the base class: weights, device, batch size, and settings that name
weights by content and leave out where they live) and `amg_settings` (stock automatic-mask
settings, which every config of the family extends).

`engine/` is the batched automatic-mask engine (`engine.amg`: stock AMG's masks for batches of
images, kept on the device), the interface it calls (`engine.segmenter.PromptableSegmenter`)
and the base of the generators that run on it (`engine.generator.EngineGenerator`). A family
folder with a `segmenter.py` (its network behind that interface) runs on the engine:

    sam/    generator.py  segmenter.py  shared_decoder.py   on the engine (exact mode: stock AMG, mask for mask)
    sam3/   generator.py  segmenter.py  network.py          on the engine in points mode; concepts use the segmenter alone
    sam2/   generator.py                                    the `sam2` package's own SAM2AutomaticMaskGenerator

`sam2` is not on the engine: its automatic mask generator has steps the engine lacks (`use_m2m`
decodes every mask again with itself as a prompt; `multimask_output=false`), and no SAM 2.1
adapter has been shown to give its masks mask for mask, the engine's promise in exact mode.

Nothing here is imported until a generator of the family is built (`pipeline.generators`
registers the three by module name), so commands that never run SAM start without torch.
"""
