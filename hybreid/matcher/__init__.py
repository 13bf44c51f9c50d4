"""Central matcher: MQTT ingest -> validate -> gallery (SQLite) + index (FAISS) -> identities, events."""
