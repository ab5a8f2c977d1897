"""Decode-time benchmarks: efficiency (time, memory, throughput per method), the
reward-guided benchmark and the library's logits-processor benchmark. Uses only the evals
root and DecodingMethodsModels."""
