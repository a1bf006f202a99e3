"""The on-disk index format (sole owner): manifest, shards, tombstones, atomic publish."""
