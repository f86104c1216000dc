"""Wire contracts of the mesh: msgspec Structs, subject names, block hashing, errors. No torch, no NATS."""
