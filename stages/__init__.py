"""One program per stage. Each module exposes ``Config`` (a pydantic model) and ``run(cfg, out) -> dict``."""
