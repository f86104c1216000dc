"""diffmesh process shell: CLI, configuration, NATS connection and the embedded server."""
