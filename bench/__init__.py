"""Benchmarks of the editing library and the service (issue 5): plain scripts, run by bench/run_all.sh."""
