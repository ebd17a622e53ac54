"""Helpers of bench/run.py: corpus, processes, HTTP client, wrk, servers, report."""
