"""Logging, metrics, Sentry and Langfuse tracing: a leaf package that imports only app.config."""
