// How many items (rows, tiles, channels) one at::parallel_for task of the CPU kernels takes: enough
// that a task's elements outweigh its scheduling cost.
#pragma once

#include <algorithm>
#include <cstdint>

namespace replk::cpu {

constexpr int64_t kTaskElems = 1 << 14;

inline int64_t items_per_task(int64_t elems_per_item, int64_t task_elems = kTaskElems) {
  return std::max<int64_t>(1, task_elems / std::max<int64_t>(1, elems_per_item));
}

}  // namespace replk::cpu
