"""Helpers shared by the test suite, the VM lane and the bench.

Plain Python with no pytest import: the bench (``python -m bench.run``)
and the VM lane's guest import these modules as well. Fixtures stay in
each lane's conftest.py.
"""
