/* test_shm_blocks.c - size-classed blocks, epoch retire lists and checksummed
 * records of the shared segment (shm/blocks.c), on a real /dev/shm segment. */
#include "shm_test_util.h"

SHMT_SCRATCH_SUITE(shm_blocks, 16u << 20, 4u << 20, 0, 60);

Test(shm_blocks, class_sizes_round_up_with_bounded_waste)
{
    for (uint64_t s = 1; s < (1u << 22); s += 1 + s / 7) {
        uint64_t c = kvshm_blocks_class_bytes(s);
        cr_assert_geq(c, s, "class of %lu is %lu", (unsigned long)s, (unsigned long)c);
        cr_assert_eq(c % 16, 0);
        if (s > 1024) cr_assert_leq(c, s + s / 4 + 1, "waste at %lu", (unsigned long)s);
    }
    cr_assert_eq(kvshm_blocks_class_bytes(0), 0);
    cr_assert_eq(kvshm_blocks_class_bytes(256), 256);
}

Test(shm_blocks, alloc_is_aligned_disjoint_and_reused_after_free)
{
    uint64_t offs[200], sizes[200];
    uint64_t seed = 7;
    for (int i = 0; i < 200; i++) {
        sizes[i] = 1 + shmt_rand(&seed) % 3000;
        cr_assert_eq(kvshm_blocks_alloc(&B, sizes[i], &offs[i]), KVSHM_OK);
        uint64_t c = kvshm_blocks_class_bytes(sizes[i]);
        cr_assert_eq(offs[i] % (c >= 512 ? 64 : 16), 0);
        memset(S->base + offs[i], i & 0xff, sizes[i]);
    }
    for (int i = 0; i < 200; i++)
        for (uint64_t j = 0; j < sizes[i]; j++)
            cr_assert_eq(S->base[offs[i] + j], (uint8_t)(i & 0xff), "overlap at block %d", i);
    uint64_t used = B.used;
    kvshm_blocks_free(&B, offs[10], sizes[10]);
    cr_assert_eq(B.used, used - kvshm_blocks_class_bytes(sizes[10]));
    uint64_t again;
    cr_assert_eq(kvshm_blocks_alloc(&B, sizes[10], &again), KVSHM_OK);
    cr_assert_eq(again, offs[10], "LIFO free list reuses the freed block");
}

Test(shm_blocks, region_exhaustion_reports_full)
{
    uint64_t off;
    int n = 0;
    kvshm_status st;
    while ((st = kvshm_blocks_alloc(&B, 65536, &off)) == KVSHM_OK) n++;
    cr_assert_eq(st, KVSHM_E_FULL);
    cr_assert_eq((uint64_t)n, (B.ilo - B.lo) / 65536, "the cold area ends where the inner area begins");
    cr_assert_eq(kvshm_blocks_alloc(&B, 0, &off), KVSHM_E_INVAL);
}

Test(shm_blocks, retired_blocks_wait_for_epoch)
{
    uint64_t a, b2, c;
    cr_assert_eq(kvshm_blocks_alloc(&B, 100, &a), KVSHM_OK);
    cr_assert_eq(kvshm_blocks_alloc(&B, 100, &b2), KVSHM_OK);
    cr_assert_eq(kvshm_blocks_alloc(&B, 100, &c), KVSHM_OK);
    uint64_t used = B.used;
    cr_assert_eq(kvshm_blocks_retire(&B, a, 100, 5), KVSHM_OK);
    cr_assert_eq(kvshm_blocks_retire(&B, b2, 100, 6), KVSHM_OK);
    cr_assert_eq(kvshm_blocks_retire(&B, c, 100, 7), KVSHM_OK);
    cr_assert_eq(B.retired, 3 * 112);
    cr_assert_eq(kvshm_blocks_oldest_retired(&B), 5);
    cr_assert_eq(kvshm_blocks_reclaim(&B, 5), 0, "epoch 5 is still live");
    cr_assert_eq(kvshm_blocks_reclaim(&B, 7), 2 * 112);
    cr_assert_eq(B.used, used - 2 * 112);
    cr_assert_eq(kvshm_blocks_oldest_retired(&B), 7);
    cr_assert_eq(kvshm_blocks_reclaim(&B, UINT64_MAX), 112);
    cr_assert_eq(B.retired, 0);
    cr_assert_eq(kvshm_blocks_oldest_retired(&B), UINT64_MAX);
}

Test(shm_blocks, retire_fifo_grows_past_initial_capacity)
{
    for (uint64_t i = 0; i < 5000; i++) {
        uint64_t o;
        cr_assert_eq(kvshm_blocks_alloc(&B, 32, &o), KVSHM_OK);
        cr_assert_eq(kvshm_blocks_retire(&B, o, 32, 1 + i / 100), KVSHM_OK);
        if (i % 700 == 0) kvshm_blocks_reclaim(&B, 1 + i / 200);
    }
    kvshm_blocks_reclaim(&B, UINT64_MAX);
    cr_assert_eq(B.used, 0);
    cr_assert_eq(B.retired, 0);
}

Test(shm_blocks, record_roundtrip_checksum_and_errors)
{
    uint64_t off;
    const char *k = "hello-key", *v = "some value bytes";
    cr_assert_eq(kvshm_rec_new(&B, k, 9, v, 16, 42, 0, &off), KVSHM_OK);
    char buf[64];
    kvshm_val out = { buf, sizeof buf, 0, 0, NULL, NULL };
    cr_assert_eq(kvshm_rec_read(S, off, k, 9, &out), KVSHM_OK);
    cr_assert_eq(out.len, 16);
    cr_assert_eq(out.seq, 42);
    cr_assert_arr_eq(buf, v, 16);
    kvshm_val small = { buf, 3, 0, 0, NULL, NULL };
    cr_assert_eq(kvshm_rec_read(S, off, k, 9, &small), KVSHM_E_SMALLBUF);
    cr_assert_eq(small.len, 16);
    cr_assert_eq(kvshm_rec_read(S, off, "hello-kez", 9, &out), KVSHM_E_CORRUPT);
    /* a flipped value byte is caught by the checksum */
    S->base[off + KVSHM_REC_HDR + 9 + 3] ^= 1;
    cr_assert_eq(kvshm_rec_read(S, off, k, 9, &out), KVSHM_E_CORRUPT);
    /* out-of-bounds offsets never dereference */
    cr_assert_eq(kvshm_rec_read(S, S->size - 8, k, 9, &out), KVSHM_E_CORRUPT);
    cr_assert_eq(kvshm_rec_read(S, 0, k, 9, &out), KVSHM_E_CORRUPT);
    cr_assert_null(kvshm_at(S, S->size, 1));
    cr_assert_null(kvshm_at(S, UINT64_MAX - 4, 8));
    uint64_t t;
    cr_assert_eq(kvshm_rec_new(&B, k, 9, NULL, 0, 43, 1, &t), KVSHM_OK);
    cr_assert_eq(kvshm_rec_read(S, t, k, 9, &out), KVSHM_DELETED);
    cr_assert_eq(out.seq, 43);
    cr_assert_eq(kvshm_rec_new(&B, k, 0, v, 1, 1, 0, &t), KVSHM_E_INVAL);
}

Test(shm_blocks, index_areas_grow_down_and_keep_their_own_free_lists)
{
    uint64_t inner[64], leaf[8], cold;
    int ni = 0;
    /* the inner area fills first, then spills into the leaf area */
    while (ni < 64 && kvshm_blocks_alloc_inner(&B, 4096, &inner[ni]) == KVSHM_OK && inner[ni] >= B.ilo) ni++;
    cr_assert_eq(ni, (int)((B.lo + (4u << 20) - B.ilo) / 4096), "inner area holds %d blocks", ni);
    cr_assert_lt(inner[ni], B.ilo, "spilled into the leaf area");
    for (int i = 1; i < ni; i++) cr_assert_lt(inner[i], inner[i - 1], "grows down");
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(kvshm_blocks_alloc_idx(&B, 256, &leaf[i]), KVSHM_OK);
        cr_assert_lt(leaf[i], B.ilo);
        cr_assert_eq(leaf[i] % 64, 0);
    }
    cr_assert_eq(kvshm_blocks_alloc(&B, 256, &cold), KVSHM_OK);
    cr_assert_lt(cold, leaf[7], "cold area below the index areas");
    /* a freed block goes back to the list of its own area */
    kvshm_blocks_free(&B, inner[3], 4096);
    kvshm_blocks_free(&B, leaf[2], 256);
    uint64_t a, b2, c;
    cr_assert_eq(kvshm_blocks_alloc(&B, 256, &a), KVSHM_OK);
    cr_assert_neq(a, leaf[2], "cold allocation does not take a leaf-area block");
    cr_assert_eq(kvshm_blocks_alloc_idx(&B, 256, &b2), KVSHM_OK);
    cr_assert_eq(b2, leaf[2]);
    cr_assert_eq(kvshm_blocks_alloc_inner(&B, 4096, &c), KVSHM_OK);
    cr_assert_eq(c, inner[3]);
}

Test(shm_blocks, a_full_area_splits_a_larger_free_block_for_a_small_class)
{
    /* fill the leaf area with 144-byte records and the index area with
     * 48-byte blocks until neither has room: the two areas meet */
    uint64_t off, leaf[64];
    int nleaf = 0;
    while (kvshm_blocks_alloc(&B, 142, &off) == KVSHM_OK)
        if (nleaf < 64) leaf[nleaf++] = off;
    while (kvshm_blocks_alloc_idx(&B, 42, &off) == KVSHM_OK) {}
    cr_assert_eq(kvshm_blocks_alloc_idx(&B, 42, &off), KVSHM_E_FULL);
    cr_assert_eq(nleaf, 64);
    /* a freed record of a larger class now serves three 48-byte blocks */
    kvshm_blocks_free(&B, leaf[5], 142);
    uint64_t used = B.used, splits = B.splits, got[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(kvshm_blocks_alloc_idx(&B, 42, &got[i]), KVSHM_OK, "block %d", i);
        cr_assert_geq(got[i], leaf[5]);
        cr_assert_leq(got[i] + 48, leaf[5] + 144, "inside the freed block");
        cr_assert_eq(got[i] % 16, 0);
        memset(S->base + got[i], 0x40 + i, 48);
    }
    cr_assert_eq(B.splits, splits + 1, "one split, then the pieces from the free list");
    cr_assert_neq(got[0], got[1]);
    cr_assert_neq(got[1], got[2]);
    cr_assert_neq(got[0], got[2]);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 48; j++) cr_assert_eq(S->base[got[i] + j], 0x40 + i, "overlap");
    cr_assert_eq(B.used, used + 3 * 48);
    /* the area is full again; freed pieces come back by address and are reused */
    cr_assert_eq(kvshm_blocks_alloc_idx(&B, 42, &off), KVSHM_E_FULL);
    kvshm_blocks_free(&B, got[1], 42);
    cr_assert_eq(kvshm_blocks_alloc_idx(&B, 42, &off), KVSHM_OK);
    cr_assert_eq(off, got[1]);
    /* a class larger than every free block still fails */
    cr_assert_eq(kvshm_blocks_alloc(&B, 300, &off), KVSHM_E_FULL);
}
