// A fixed pool of worker threads sized to the cores; parallel_for splits [0, n) into chunks.
// The pool is process-wide so kernels called from any libuv worker share the same cores.
#pragma once
#include <cstddef>
#include <functional>

namespace lowbit {

int num_threads();
void set_num_threads(int n);  // n <= 0: one per hardware thread
// Calls fn(begin, end, chunk_index) over disjoint chunks covering [0, n); blocks until done. An exception from fn
// reaches the caller (the first one thrown) once every chunk has ended. Nested calls run serially on the calling thread.
void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t, int)>& fn,
                  std::size_t min_chunk = 1);

}  // namespace lowbit
