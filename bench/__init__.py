"""The benchmark: the scoring job side by side with Keras predict and raw onnxruntime.

`python -m bench` (or `make bench`) trains its own models into bench/work/, writes the
workloads there, measures every path in its own child process, and writes bench/results.md and
bench/throughput.png. Speed is measured here and never asserted by the test suite.
"""
