"""The benchmark and soak test (`make bench`, `make soak`); see bench/run.py."""
