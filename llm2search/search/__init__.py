"""Query side: open shards, search, merge, re-rank, metadata."""
