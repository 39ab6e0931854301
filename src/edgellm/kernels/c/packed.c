/* Weights interleaved 16 rows at a time (layout in edgellm.h, el_pack16), and products over them.
 *
 * A row-at-a-time dot product sums each block's products across vector lanes and applies the block's scale per
 * row; with several activation rows (batched decode, prefill) that bookkeeping, not the weight reads, sets the
 * speed. Interleaved, one vector holds the same 4 weights of 16 rows, a 4-byte broadcast of the activations
 * multiplies all 16 at once, and each lane ends as one output: a block costs its 8 multiply-adds and one scale
 * per activation row, whatever the format's header. The layout has the original's size (Q4_1) or 6 % more
 * (Q8_0: a sum per row and block, so that activations can be made unsigned for vpdpbusd). */
#include <string.h>

#include "edgellm.h"

#define GROUP 16

static size_t group_block_bytes(enum el_type type) {
    switch (type) {
    case EL_Q4_1: return GROUP * sizeof(block_q4_1);
    case EL_Q8_0: return GROUP * (sizeof(block_q8_0) + sizeof(int16_t));
    default: return 0;
    }
}

size_t el_packed16_bytes(enum el_type type, int n_rows, int n_cols) {
    const size_t per_block = group_block_bytes(type);
    if (!per_block || n_rows <= 0 || n_rows % GROUP || n_cols <= 0 || n_cols % 32) return 0;
    return (size_t)(n_rows / GROUP) * (size_t)(n_cols / 32) * per_block;
}

/* quant j (0..31) of a Q4_1 block: low nibbles hold 0..15, high nibbles 16..31 */
static uint8_t q4_1_quant(const block_q4_1 *b, int j) {
    return j < 16 ? b->qs[j] & 0x0F : b->qs[j - 16] >> 4;
}

int el_pack16(enum el_type type, const void *w, int n_rows, int n_cols, void *out) {
    const size_t per_block = group_block_bytes(type);
    if (!el_packed16_bytes(type, n_rows, n_cols)) return -1;
    const int nb = n_cols / 32;
    uint8_t *o = out;
    for (int g = 0; g < n_rows / GROUP; g++) {
        for (int b = 0; b < nb; b++, o += per_block) {
            if (type == EL_Q4_1) {
                el_fp16_t *d = (el_fp16_t *)o, *m = d + GROUP;
                uint8_t *q = o + 4 * GROUP;
                for (int i = 0; i < GROUP; i++) {
                    const block_q4_1 *blk = (const block_q4_1 *)w + (size_t)(g * GROUP + i) * nb + b;
                    d[i] = blk->d;
                    m[i] = blk->m;
                    for (int j = 0; j < 4; j++)
                        for (int e = 0; e < 4; e++)
                            q[64 * j + 4 * i + e] = (uint8_t)(q4_1_quant(blk, 4 * j + e) |
                                                              q4_1_quant(blk, 4 * j + 16 + e) << 4);
                }
            } else {
                el_fp16_t *d = (el_fp16_t *)o;
                int16_t *wsum = (int16_t *)(o + 2 * GROUP);
                int8_t *q = (int8_t *)(o + 4 * GROUP);
                for (int i = 0; i < GROUP; i++) {
                    const block_q8_0 *blk = (const block_q8_0 *)w + (size_t)(g * GROUP + i) * nb + b;
                    int sum = 0;
                    d[i] = blk->d;
                    for (int k = 0; k < 8; k++)
                        for (int e = 0; e < 4; e++) {
                            q[64 * k + 4 * i + e] = blk->qs[4 * k + e];
                            sum += blk->qs[4 * k + e];
                        }
                    wsum[i] = (int16_t)sum;
                }
            }
        }
    }
    return 0;
}
