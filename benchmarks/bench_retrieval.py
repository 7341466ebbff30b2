"""Model B retrieval (KH eq. 16) at the hardware limit: ``assocmem.functional.retrieve`` and
``ModernHopfield.step`` against the bare matrix products, the machine's peak matmul rate and the
plain routes (torch ``softmax(beta q X^T) X``, ``scaled_dot_product_attention``, numpy), all
measured in this run; bfloat16/float16 banks; iterated recall against steps x one step.

    python benchmarks/bench_retrieval.py [--rounds 7] [--quick]

Prints the table of ``assocmem bench`` and writes benchmarks/results/retrieval.json.
"""
import os
import sys

from assocmem.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    extra = sys.argv[1:]
    sys.exit(main(["bench", "--cases", "retrieval,lowp,recall", "--json", os.path.join(HERE, "results", "retrieval.json"), *extra]))
