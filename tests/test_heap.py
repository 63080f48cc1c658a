"""The actor's allocator keeps the memory a round frees (clients.heap)."""

import subprocess
import sys

import pytest

from clients.heap import keep_freed_memory

# Every "round" mallocs four 16 MiB blocks, writes them and frees them (as a vectorized
# round does with its stacked tensors); faults counted over the last two rounds.
ROUNDS = """
import ctypes, resource, sys
from clients.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 16 * 2**20
libc.free(libc.malloc(24 * 2**20))
for r in range(4):
    if r == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(4)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks:
        libc.free(b)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    pages = 2 * 4 * 16 * 2**20 // 4096
    if _faults("default") < pages // 2:
        pytest.skip("this C library keeps the memory anyway")
    assert _faults("keep") < pages // 50  # 32,768 page faults by default


def test_keep_freed_memory_says_whether_it_applied():
    assert keep_freed_memory() is sys.platform.startswith("linux")
    assert keep_freed_memory() is keep_freed_memory()  # once per process
