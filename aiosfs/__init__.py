"""aiosfs: the filesystem face of the kernel. Paths, opens, reads and writes become kernel calls.

This package never imports torch; the kernel package never imports pyfuse3.
"""

from kernel import __version__

__all__ = ["__version__"]
