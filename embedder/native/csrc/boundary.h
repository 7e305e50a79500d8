// What crosses the extern "C" boundary: a status code, never a C++ exception (one escaping into ctypes aborts the
// whole process). The codes are embedder/native.py's _STATUS.
#pragma once

#include <new>

namespace boundary {

enum Status : int { OK = 0, NO_KERNEL = 1, OUT_OF_MEMORY = 2, FAILED = 3, NOT_FINITE = 4 };

template <class F>
int guarded(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return OUT_OF_MEMORY;
  } catch (...) {
    return FAILED;
  }
}

}  // namespace boundary
