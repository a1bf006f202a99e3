"""Offline indexer: scan, change detection, decode + preprocess, streaming pipeline."""
