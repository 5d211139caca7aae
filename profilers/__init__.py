"""Device-side latency runners (only numpy + onnxruntime for ort_runner.py)."""
