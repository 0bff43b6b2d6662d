"""The names of the scheduling policies, importable without torch (the CLI checks them early).

Each is implemented in ``kernel/scheduler.py``; a test keeps the two lists in step.
"""

POLICIES: dict[str, str] = {
    "fifo": "first come, first served; no preemption",
    "rr": "round robin with a time slice of `quantum` generated tokens",
    "priority": "the agent's priority first; preempts lower priorities",
    "fair": "even shares of the batch and of generated tokens between agents",
    "serial": "baseline: strictly one request at a time",
    "aios": "baseline: AIOS-style 1 s collection window, each request generated separately",
}
