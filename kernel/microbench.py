"""The kernel side of the FUSE-overhead benchmark: the same trivial syscall, called directly.

``aiosfs bench`` starts this as a subprocess and alternates blocks of calls through the mount
with blocks of calls here, on the same model, so both see the same machine at the same time.

Protocol: read a number N from stdin, make N calls, print one JSON line with their latencies in
seconds; repeat until stdin closes. The first line printed is ``ready``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import trio

from kernel import Kernel, KernelConfig

TRIVIAL = json.dumps({"call": "llm", "prompt": "hi", "max_tokens": 1}).encode()


async def serve(model: str, threads: int) -> None:
    kernel = Kernel(KernelConfig(model=model, threads=threads))
    await kernel.start()
    await kernel.wait_loaded()
    kernel.create_agent("direct")
    print("ready", flush=True)
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            break
        latencies = []
        for _ in range(int(line)):
            start = time.perf_counter()
            result = kernel.submit("direct", TRIVIAL)
            await result.wait_finished()
            await kernel.next_out(kernel.agent("direct"))
            latencies.append(time.perf_counter() - start)
        print(json.dumps(latencies), flush=True)
    await kernel.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    trio.run(serve, args.model, args.threads)


if __name__ == "__main__":
    main()
