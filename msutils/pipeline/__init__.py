"""Running the notebooks: kernel-side helpers, the fold cache, profiles, the fan-out runner, the book build, report helpers."""
