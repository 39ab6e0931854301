/* NEON kernels (AArch64). */
#include "../../edgellm.h"

#if defined(__aarch64__)
#include <arm_neon.h>

void el_register_neon(el_type_traits *t) { (void)t; }
#else
void el_register_neon(el_type_traits *t) { (void)t; }
#endif
