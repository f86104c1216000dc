"""Masked-diffusion LM worker (LLaDA family): engine (torch) and bus adapter."""
