"""The example FastAPI service built on the dispatcher."""
