"""Runs a command and prints one JSON line: its wall time and the peak resident memory of the
process tree it started (RUSAGE_CHILDREN). Used by `npm run bench` for the convert rows."""
import json
import resource
import subprocess
import sys
import time

started = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(json.dumps({
    "seconds": time.perf_counter() - started,
    "peakRssMiB": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
