// Runtime CPU feature dispatch: one binary runs on any x86-64; LOWBIT_SIMD=scalar|avx2|avx512 caps the level.
#pragma once

namespace lowbit {

enum class SimdLevel { Scalar = 0, Avx2 = 1, Avx512 = 2 };

SimdLevel simd_level();              // the level in force (detected, capped by LOWBIT_SIMD / set_simd_level)
void set_simd_level(SimdLevel cap);  // caps at what the CPU supports
const char* simd_name(SimdLevel l);

}  // namespace lowbit
