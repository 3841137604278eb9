"""``make bench``: vdsm-imageio side by side with ovirt-imageio 2.5.1.

Run as ``python -m bench.run`` from the repository root. The harness is a
tool, not part of the service: it starts both daemons, drives them with
the same clients and prints one table (see bench/run.py).
"""
