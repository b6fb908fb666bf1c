"""The bench harness behind bench/run.py (see bench/README.md for the modules)."""
