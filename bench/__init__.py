"""Benchmark harness for orpoll: a Go fake OpenRouter, Go/wrk load clients, and the
``python -m bench`` runner that writes bench/results.md."""
