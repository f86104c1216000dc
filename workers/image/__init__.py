"""Image-diffusion worker: diffusers pipelines behind /v1/images/generations (engine.py has torch; storage.py not)."""
