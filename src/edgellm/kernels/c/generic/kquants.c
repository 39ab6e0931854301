/* Portable C kernels for the k-quants (Q2_K..Q6_K) against Q8_K activations. */
#include <string.h>

#include "../edgellm.h"

/* Filled in by the k-quant kernels; until then the k-quants have no C kernel and the table says so. */
void el_register_generic_kquants(el_type_traits *t) {
    t[EL_Q2_K] = (el_type_traits){"Q2_K", QK_K, sizeof(block_q2_K), EL_Q8_K, NULL, NULL, NULL};
    t[EL_Q3_K] = (el_type_traits){"Q3_K", QK_K, sizeof(block_q3_K), EL_Q8_K, NULL, NULL, NULL};
    t[EL_Q4_K] = (el_type_traits){"Q4_K", QK_K, sizeof(block_q4_K), EL_Q8_K, NULL, NULL, NULL};
    t[EL_Q5_K] = (el_type_traits){"Q5_K", QK_K, sizeof(block_q5_K), EL_Q8_K, NULL, NULL, NULL};
    t[EL_Q6_K] = (el_type_traits){"Q6_K", QK_K, sizeof(block_q6_K), EL_Q8_K, NULL, NULL, NULL};
}
