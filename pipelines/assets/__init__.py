"""Assets of the code location, one module per layer: ingest, identity, profiles."""
