"""Load benchmarks: every hot path measured against a hello-world route of the same server, same run."""
