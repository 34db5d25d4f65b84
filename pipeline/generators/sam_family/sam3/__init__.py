"""`--generator sam3`: SAM 3 on the batched engine (points) or by text prompts (concepts), and its network."""
