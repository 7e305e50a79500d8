"""Native CPU code: the optimized BLAS, the g++ wrapper and kernel cache, our C++ kernels, and the fast
GELU/attention paths that use them."""
