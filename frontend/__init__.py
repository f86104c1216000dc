"""OpenAI-compatible HTTP frontend: aiohttp app, preprocessing, bus client, model registry, media store."""
