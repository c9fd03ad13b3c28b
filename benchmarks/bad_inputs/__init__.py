"""Bad inputs and faults, tried as a tester would: does rece-lite refuse them cleanly?

A harness (:mod:`.harness`), one catalogue of probes per category, and the runner (:mod:`.run`, whose
docstring says how probes are judged).  Run it as ``python benchmarks/bad_inputs.py`` (as before),
``python benchmarks/bad_inputs`` or ``python -m benchmarks.bad_inputs``.
"""
