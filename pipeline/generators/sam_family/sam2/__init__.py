"""`--generator sam2`: SAM 2.1 through the `sam2` package's own automatic mask generator (not the engine)."""
