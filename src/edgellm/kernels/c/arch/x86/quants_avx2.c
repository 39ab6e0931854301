/* AVX2 kernels. Compiled for every x86-64 build with a target pragma, used only when the CPU has it. */
#include "../../edgellm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

void el_register_avx2(el_type_traits *t) { (void)t; }
#else
void el_register_avx2(el_type_traits *t) { (void)t; }
#endif
