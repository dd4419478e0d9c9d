"""Benchmarks, outside the runtime library: `python -m bench.suite` (make bench), `python -m bench.compare`
(make compare), `python -m bench.scale` (corpus size), `python -m bench.tokenizer` (make bench-tokenizer), and the
generated Chinese text they measure on (textgen); common.py holds what they share. Nothing in shared/ imports bench."""
