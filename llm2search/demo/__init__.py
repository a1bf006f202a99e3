"""The bundled demo: a synthetic bilingual world of shapes, and the script that trains the small
model (`llm2search/models/demo/`) on it."""
