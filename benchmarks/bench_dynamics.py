"""Dynamics: one asynchronous sweep of the binary models (classical Hopfield, Dense AM; N = 1000
neurons, B = 256 cues) and one RK4 step of TwoLayerNetwork (KH eq. 1) against its four derivative
evaluations, measured in the same run.

    python benchmarks/bench_dynamics.py [--rounds 5] [--quick]

Prints the table of ``assocmem bench`` and writes benchmarks/results/dynamics.json.
"""
import os
import sys

from assocmem.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    extra = sys.argv[1:]
    sys.exit(main(["bench", "--cases", "binary,rk4", "--json", os.path.join(HERE, "results", "dynamics.json"), *extra]))
