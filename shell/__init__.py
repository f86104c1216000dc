"""The process shell every component imports: NATS connection and embedded server (`bus`), frozen configs
(`config`), CLI flag helpers (`flags`), the process loop (`process`), metrics, logs and the model registry.

It imports `protocol` and nothing else of the project: no frontend, router or worker code.
"""
