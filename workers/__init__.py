"""Worker processes: the shared bus runtime and one package per worker kind (engine.py + worker.py)."""
