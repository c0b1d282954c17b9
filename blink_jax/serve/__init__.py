"""The HTTP service: `python -m blink_jax.serve --workdir=W` (see __main__.py and app.py)."""
