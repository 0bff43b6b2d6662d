"""The aiosfs kernel: agents, syscalls, scheduling and LLM cores, with no filesystem in sight.

``from kernel import Kernel, KernelConfig``; see kernel/kernel.py for a usage example. The two
names are imported lazily so that ``kernel.__version__`` (used by light CLI commands) does not
pull in torch.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kernel.config import KernelConfig
    from kernel.kernel import Kernel


def __getattr__(name: str) -> Any:
    if name == "Kernel":
        from kernel.kernel import Kernel

        return Kernel
    if name == "KernelConfig":
        from kernel.config import KernelConfig

        return KernelConfig
    raise AttributeError(f"module 'kernel' has no attribute {name!r}")


__all__ = ["Kernel", "KernelConfig", "__version__"]
