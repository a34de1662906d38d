"""Live ingest: sources (files, folders, streams, webcams) → the footage pipeline → gallery appends; no HTTP."""
