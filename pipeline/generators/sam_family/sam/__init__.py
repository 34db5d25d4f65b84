"""`--generator sam`: SAM 1 on the batched engine (`generator`), its adapter (`segmenter`) and fast mode's decoder."""
