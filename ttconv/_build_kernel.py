"""cffi builder for ttconv._kernel: the header is the cdef, the C file the source."""
import os

from cffi import FFI

CSRC = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "csrc"))

with open(os.path.join(CSRC, "ttconv_kernel.h"), encoding="utf-8") as header:
    CDEF = header.read()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "ttconv._kernel",
    '#include "ttconv_kernel.h"',
    # a separate source (not an #include) so that editing it triggers a rebuild
    sources=[os.path.relpath(os.path.join(CSRC, "ttconv_kernel.c"))],
    depends=[os.path.relpath(os.path.join(CSRC, "ttconv_kernel.h"))],
    include_dirs=[CSRC],
    extra_compile_args=["-O3"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
