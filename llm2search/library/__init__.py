"""Jobs over a whole library around the index: export, near-duplicates, watching a folder."""
