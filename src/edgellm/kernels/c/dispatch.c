/* CPU feature detection and the kernel table. The table is filled once from the best compiled path the CPU
 * supports (or the one asked for); a path registers only the kernels it implements, so every other entry
 * keeps its generic kernel. */
#include <string.h>

#include "edgellm.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

static el_type_traits tables[EL_ISA_COUNT][EL_TYPE_COUNT];
static el_col_kernels col_tables[EL_ISA_COUNT];
_Thread_local const el_type_traits *el_traits = tables[EL_ISA_GENERIC];
_Thread_local const el_col_kernels *el_col = &col_tables[EL_ISA_GENERIC];
static _Thread_local enum el_isa current = EL_ISA_GENERIC;
const char *el_isa_names[EL_ISA_COUNT] = {"generic", "avx2", "avx512", "neon"};
static enum el_isa default_isa = EL_ISA_GENERIC;
static int initialised = 0;

void el_fp16_init_table(void);
void el_nl_init_scales(void);

int el_isa_compiled(enum el_isa isa) {
    switch (isa) {
    case EL_ISA_GENERIC: return 1;
#if defined(__x86_64__) || defined(_M_X64)
    case EL_ISA_AVX2:
    case EL_ISA_AVX512: return 1;
#endif
#if defined(__aarch64__)
    case EL_ISA_NEON: return 1;
#endif
    default: return 0;
    }
}

int el_cpu_supports(enum el_isa isa) {
    if (!el_isa_compiled(isa)) return 0;
    switch (isa) {
    case EL_ISA_GENERIC: return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    case EL_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case EL_ISA_AVX512:
        __builtin_cpu_init();
        return el_cpu_supports(EL_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__)
    case EL_ISA_NEON: return 1; /* Advanced SIMD is mandatory on AArch64 */
#endif
    default: return 0;
    }
}

/* fills one path's tables (each kernel it lacks falls back to generic) */
static void fill_tables(enum el_isa isa) {
    el_type_traits *t = tables[isa];
    el_col_kernels *c = &col_tables[isa];
    el_register_generic(t);
    el_register_columns_generic(c);
    switch (isa) {
    case EL_ISA_AVX512:
        el_register_avx2(t);
        el_register_avx512(t);
        el_register_columns_avx2(c);
        el_register_columns_avx512(c);
        break;
    case EL_ISA_AVX2:
        el_register_avx2(t);
        el_register_columns_avx2(c);
        break;
    case EL_ISA_NEON:
        el_register_neon(t);
        el_register_columns_neon(c);
        break;
    default: break;
    }
}

int el_use_isa(enum el_isa isa) {
    if (isa < 0 || isa >= EL_ISA_COUNT || !el_cpu_supports(isa)) return -1;
    el_traits = tables[isa];
    el_col = &col_tables[isa];
    current = isa;
    return 0;
}

int el_set_isa(enum el_isa isa) {
    if (el_use_isa(isa) != 0) return -1;
    default_isa = isa;
    return 0;
}

enum el_isa el_current_isa(void) { return current; }
enum el_isa el_default_isa(void) { return default_isa; }

void el_init(void) {
    if (initialised) return;
    initialised = 1;
    el_fp16_init_table();
    el_nl_init_scales();
    for (int isa = 0; isa < EL_ISA_COUNT; isa++)
        if (el_cpu_supports((enum el_isa)isa)) fill_tables((enum el_isa)isa);
    for (int isa = EL_ISA_COUNT - 1; isa >= 0; isa--) {
        if (el_cpu_supports((enum el_isa)isa) && el_set_isa((enum el_isa)isa) == 0) return;
    }
}
