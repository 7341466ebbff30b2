"""Sharded Model B retrieval over torch.distributed (gloo on this machine): time of one step with
1 and 2 ranks (launched with torchrun on 127.0.0.1), and a clean-exit check repeated --launches times.

    python benchmarks/bench_distributed.py [--n-memories 1000000] [--launches 20]

Writes benchmarks/results/distributed.json.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc, args, tmp, threads):
    js = os.path.join(tmp, f"t{nproc}-{time.time_ns()}.json")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "assocmem.distributed", f"--json={js}", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    res = json.load(open(js)) if p.returncode == 0 and os.path.exists(js) else None
    return p.returncode, res, p.stderr[-2000:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-memories", type=int, default=1_000_000)
    ap.add_argument("--n-features", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--launches", type=int, default=20, help="2-rank launches for the clean-exit check")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "distributed.json"))
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    size = [f"--n-memories={a.n_memories}", f"--n-features={a.n_features}", f"--batch={a.batch}", f"--repeats={a.repeats}"]
    out = {"K": a.n_memories, "N": a.n_features, "B": a.batch, "cores": cores, "timings": [], "exit_codes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2, 1, 2):  # interleaved, twice
            threads = max(1, cores // nproc)
            rc, res, err = launch(nproc, size, tmp, threads)
            if rc != 0:
                print(err, file=sys.stderr)
                return rc
            res["threads_per_rank"] = threads
            out["timings"].append(res)
            print(f"{nproc} rank(s) x {threads} thread(s): step {res['step_seconds_min'] * 1e3:.1f} ms (min), "
                  f"{res['step_seconds_median'] * 1e3:.1f} ms (median), {res['local_patterns']:,} patterns on rank 0")
        small = ["--n-memories=3001", "--n-features=32", "--batch=12"]
        for i in range(a.launches):
            rc, _, err = launch(2, small, tmp, 1)
            out["exit_codes"].append(rc)
            if rc != 0:
                print(f"launch {i}: exit {rc}\n{err}", file=sys.stderr)
        print(f"{a.launches} two-rank launches: exit codes {sorted(set(out['exit_codes']))}")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {a.json}")
    return 0 if all(rc == 0 for rc in out["exit_codes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
