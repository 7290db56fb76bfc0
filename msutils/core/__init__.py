"""Foundations every other layer uses: atomic I/O, paths, environment, parameter checks, the process pool, serialisation."""
