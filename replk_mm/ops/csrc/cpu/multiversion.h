// REPLK_MULTIVERSION: a function compiled for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and the
// baseline, the copy for the running CPU chosen at load time (GCC's target_clones); for the
// element-wise loops that `omp simd` vectorises.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define REPLK_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define REPLK_MULTIVERSION
#endif
