"""Where and how the arithmetic runs: the device (:mod:`.devices`), the precision (:mod:`.precision`),
several processes (:mod:`.distributed`) and glibc's allocator (:mod:`.allocator`, applied by entry
points only: importing fastadapt changes nothing in the process)."""

from fastadapt.runtime.allocator import keep_freed_memory

__all__ = ["keep_freed_memory"]
