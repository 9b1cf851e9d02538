"""BGE-M3 on Ray."""
