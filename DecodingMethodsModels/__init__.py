"""Decoding methods of the Amulet reproduction: math, engine, loading, prompts and I/O."""
