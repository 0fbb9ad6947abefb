"""Every program in examples/ runs and passes its own checks.

Each example is run with this interpreter in a temporary working directory,
with small data, and must exit 0 and print the lines listed for it in
``EXPECTED``. An example without an entry in ``EXPECTED`` (or an entry
without its example) fails, so a new example cannot go untested. The
shared-mode example gets the kvault-writer of this build through
``KVAULT_WRITER`` and must report that it attached.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

from kohakuvault._writer import writer_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
WRITER = writer_binary(ROOT)

# file name -> (arguments for a small run, regular expressions each matching one whole line
# of its output, whether it needs a kvault-writer)
EXPECTED = {
    "dataset_workers.py": (
        ["--samples", "64", "--workers", "2", "--batch-size", "8"],
        [r"wrote 64 samples of shape \(32, 32, 3\) to .*",
         r"fork: 64 samples read by \d worker processes, 0 mismatches",
         r"spawn: 64 samples read by \d worker processes, 0 mismatches",
         r"dataset check passed"],
        False,
    ),
    "rag_store.py": (
        [],
        [r"10 passages indexed, 10 embeddings of 256 dims",
         r"  bm25 +fused=\S+ bm25_rank=1 vector_rank=\d+",
         r"hybrid search check passed"],
        False,
    ),
    "metrics_logging.py": (
        ["--workers", "2", "--steps", "300", "--flush-every", "50"],
        [r"2 processes \(spawn\) logged 300 steps each to .*",
         r"run1: 300 rows, loss 2\.010 -> .*",
         r"columns: 6",
         r"metrics check passed"],
        False,
    ),
    "media_cache.py": (
        ["--files", "8", "--requests", "40", "--budget", "300000"],
        [r"40 requests: \d+ hits, \d+ misses, 0 corrupt copies; \d+ bytes cached",
         r"evicted 2 entries by prefix 'thumbs/' and \d+ by LRU; .*\(budget 300000\)",
         r"media cache check passed"],
        False,
    ),
    "migrate_folder.py": (
        [],
        [r"imported 36 files, \d+ bytes, from .*",
         r"compared 36 files with SHA-256: 0 differ, 0 unexpected",
         r"round trip byte-identical"],
        False,
    ),
    "shared_writers.py": (
        ["--workers", "2", "--keys", "300"],
        [r"mode: attached to a kvault-writer",
         r"worker 0: shared=True write_mode=pipelined .*, 0 wrong values read",
         r"worker 1: shared=True write_mode=applied .*, 0 wrong values read",
         r"600 keys in the vault \(expected 600\)",
         r"shared-mode check passed"],
        True,
    ),
}

FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(EXAMPLES, "*.py")))


def _run(name, args, cwd, env):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout, proc.stderr)
    return proc


def test_every_example_has_an_entry_and_every_entry_an_example():
    assert FILES, f"no examples found in {EXAMPLES}"
    assert sorted(EXPECTED) == FILES, (
        f"examples without an EXPECTED entry: {sorted(set(FILES) - set(EXPECTED))}; "
        f"entries without an example: {sorted(set(EXPECTED) - set(FILES))}")


@pytest.mark.parametrize("name", FILES)
def test_example_runs_and_passes_its_checks(name, tmp_path):
    assert name in EXPECTED, f"examples/{name} has no entry in EXPECTED of {__file__}"
    args, patterns, needs_writer = EXPECTED[name]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop("KVAULT_SHARED", None)
    if needs_writer:
        if WRITER is None:
            pytest.skip("kvault-writer is not built")
        env["KVAULT_WRITER"] = WRITER

    usage = _run(name, ["--help"], tmp_path, env)
    assert usage.returncode == 0 and usage.stdout.startswith("usage:"), usage.stderr

    proc = _run(name, args, tmp_path, env)
    assert proc.returncode == 0, f"examples/{name} exited {proc.returncode}:\n{proc.stderr}"
    for pattern in patterns:
        assert re.search(rf"^{pattern}$", proc.stdout, re.M), (
            f"examples/{name}: no output line matches {pattern!r}")
    assert os.listdir(tmp_path) == [], "examples must keep their files in a temporary folder"
