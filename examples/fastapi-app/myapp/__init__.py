"""An example FastAPI app for lifespan-sidecar's image recipes."""
