"""MARN's architectures, one paper concept per file."""
