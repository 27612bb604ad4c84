"""The MEND editing service: a FastAPI app over editor_core with a Redis Streams edit log."""
