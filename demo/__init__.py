"""`make demo`: the whole pipemon stack watching a simulated pipeline (demo/README.md)."""
