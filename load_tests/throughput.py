"""Throughput suite (locustfile): users start a mix of lt-1, lt-10 and lt-event runs and wait for
each; `LT_WORKERS` real worker processes serve them. Run it with `python -m load_tests.run throughput`.
"""

from load_tests.common import WorkflowUser

__all__ = ["WorkflowUser"]
