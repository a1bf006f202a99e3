"""Retrieval evaluation: Recall@K on image-caption test sets, exact search beside the index."""
