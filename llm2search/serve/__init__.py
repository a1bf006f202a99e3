"""The HTTP service over the search engine: API schemas, security, routes, batching around the
model, thumbnails, the web page (`llm2search serve`). Needs the `server` extra (fastapi, uvicorn)."""
