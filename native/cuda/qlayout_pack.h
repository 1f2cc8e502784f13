// The host-side repack of a CPU PackedView (native/cpu/packed.h) into the CUDA kernels' device layout
// (qlayout.h). Compiled in every build (qlayout_pack.cpp), so the layout is checked where there is no GPU too.
#pragma once
#include "cpu/packed.h"
#include "cuda/gpu.h"

namespace lowbit {
namespace cuda {

// Throws std::invalid_argument for a group size the kernels do not take (32, 64, multiples of 128, or per row).
QLayout device_layout(const PackedView& p);

}  // namespace cuda
}  // namespace lowbit
