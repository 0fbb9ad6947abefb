/*
 * fuzz_ring.c -- libFuzzer target for the submission ring as the writer
 * consumes a client's ring (shm/ring.c) and decodes its records
 * (kvshm_rec_check and kvshm_keyrec_decode of shm/proto.c, as the record
 * switch of workers/clients.c uses them). The client owns the ring's memory, so every field is
 * hostile: the header's magic, layout hash and capacity, every producer and
 * consumer word (tail, head, committed, futex words, sleeping flags, wanted
 * positions), each record's length and type, the key header's lengths; and
 * the producer may keep writing while the writer reads.
 *
 * Input layout (short inputs are zero-extended):
 *   [0]        ring choice (bit 0: 4 KiB or 8 KiB) and header overrides
 *              (bit 1 magic, bit 2 layout hash, bit 3 capacity from the
 *              input; bit 4 an unsealed memfd; bit 5 small positions)
 *   [1]        number of 4-byte producer edits taken from the input's end
 *   [2..10)    magic, [10..18) layout hash, [18..22) capacity (when chosen)
 *   [22..150)  header bytes 64..192 (producer and consumer lines)
 *   [150..154) with bit 5: head = u16 * 8, tail = head + u16 * 8
 *   [154..)    ring data from offset 0, the edits at the end
 * Each edit runs after a peek, before the record is decoded: it moves the
 * tail, rewrites the peeked record's length or type, or a data byte.
 *
 * Checks: kvshm_ring_map refuses what it must (magic, layout, size, seals);
 * a peeked record lies inside the data area (the consumer's mapping),
 * 8-byte aligned, never a pad;
 * a decoded key and value lie inside the payload and the key length is
 * 1..KVSHM_MAX_KEY; the loop ends (at most 8192 records, as the writer's
 * fairness bound) and release publishes the consumed position.
 *
 * Build and run: docs/fuzzing.md.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvshm/proto.h"
#include "kvshm/ring.h"
#include "layout.h"

#define CHECK(e) do { if (!(e)) abort(); } while (0)

typedef struct fz_ring {
    kvshm_ring *prod;      /* producer handle (owns the sealed memfd) */
    uint8_t *mem;          /* this target's own mapping: header + data */
    uint32_t cap;
    int unsealed;          /* an unsealed memfd with a valid header */
    uint8_t *umem;
} fz_ring;

static fz_ring rings[2];
static uint64_t good_hash;

static void setup(void)
{
    if (rings[0].prod) return;
    for (int i = 0; i < 2; i++) {
        fz_ring *z = &rings[i];
        z->cap = 4096u << i;
        if (kvshm_ring_create(z->cap, &z->prod) != KVSHM_OK) abort();
        z->mem = mmap(NULL, KVSHM_RING_HDR + z->cap, PROT_READ | PROT_WRITE, MAP_SHARED,
                      kvshm_ring_fd(z->prod), 0);
        CHECK(z->mem != MAP_FAILED);
        good_hash = ((struct kvshm_ring_hdr *)z->mem)->rh_layout_hash;
        z->unsealed = memfd_create("fz-ring-unsealed", MFD_CLOEXEC);
        CHECK(z->unsealed >= 0 && ftruncate(z->unsealed, KVSHM_RING_HDR + z->cap) == 0);
        z->umem = mmap(NULL, KVSHM_RING_HDR + z->cap, PROT_READ | PROT_WRITE, MAP_SHARED,
                       z->unsealed, 0);
        CHECK(z->umem != MAP_FAILED);
    }
}

static uint64_t rd(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    memcpy(&v, p, n);
    return v;
}

/* The writer's handling of one record (workers/clients.c, wr_drain and
 * apply_kv): kvshm_rec_check decides, then what would be applied is copied,
 * so AddressSanitizer sees every byte read. 0 accepted, -1 the client would
 * be dropped. */
static int writer_decode(uint32_t type, const uint8_t *p, uint32_t len, const uint8_t *lo,
                         const uint8_t *hi)
{
    if (kvshm_rec_check(type, p, len) != 0) return -1;
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    switch (type) {
    case KVSHM_REC_SYNC:
        CHECK(len == 0);
        return 0;
    case KVSHM_REC_STATS: {
        CHECK(len == KVSHM_REC_STATS_BYTES);
        uint64_t s[2];
        memcpy(s, p, KVSHM_REC_STATS_BYTES);
        (void)(s[0] + s[1]);
        return 0;
    }
    default:
        CHECK(type == KVSHM_REC_PUT || type == KVSHM_REC_DEL || type == KVSHM_REC_MISS);
        CHECK(kvshm_keyrec_decode(p, len, &key, &klen, &val, &vlen) == 0);
        CHECK(klen >= 1 && klen <= KVSHM_MAX_KEY);
        CHECK(key == p + KVSHM_REC_KEYHDR && val == key + klen);
        CHECK((uint64_t)KVSHM_REC_KEYHDR + klen + vlen == len);
        CHECK(key >= lo && val + vlen <= hi);
        uint8_t *copy = malloc((size_t)klen + vlen);
        CHECK(copy);
        memcpy(copy, key, klen);
        if (type == KVSHM_REC_PUT && vlen) memcpy(copy + klen, val, vlen);
        free(copy);
        return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    uint8_t in[154] = {0};
    memcpy(in, data, size < sizeof in ? size : sizeof in);
    const uint8_t *body = size > sizeof in ? data + sizeof in : NULL;
    size_t blen = size > sizeof in ? size - sizeof in : 0;
    size_t nedit = in[1] % 64;
    if (nedit * 4 > blen) nedit = blen / 4;
    const uint8_t *edits = body ? body + blen - 4 * nedit : NULL;
    blen -= 4 * nedit;

    fz_ring *z = &rings[in[0] & 1];
    int unsealed = (in[0] & 16) != 0;
    uint8_t *mem = unsealed ? z->umem : z->mem;
    struct kvshm_ring_hdr *h = (struct kvshm_ring_hdr *)mem;
    uint8_t *dat = mem + KVSHM_RING_HDR;

    /* the client's ring as the writer will map it */
    memset(mem, 0, KVSHM_RING_HDR);
    h->rh_magic = in[0] & 2 ? rd(in + 2, 8) : KVSHM_MAGIC_RING;
    h->rh_layout_hash = in[0] & 4 ? rd(in + 10, 8) : good_hash;
    h->rh_capacity = in[0] & 8 ? (uint32_t)rd(in + 18, 4) : z->cap;
    memcpy(mem + 64, in + 22, 128);
    if (in[0] & 32) {
        h->rh_head = rd(in + 150, 2) * 8;
        h->rh_tail = h->rh_head + rd(in + 152, 2) * 8;
    }
    memset(dat, 0, z->cap);
    if (blen) memcpy(dat, body, blen < z->cap ? blen : z->cap);

    kvshm_ring *r = NULL;
    kvshm_status st = kvshm_ring_map(unsealed ? z->unsealed : kvshm_ring_fd(z->prod), &r);
    if (unsealed) CHECK(st == KVSHM_E_SIZE);
    if (st != KVSHM_OK) {
        CHECK(st == KVSHM_E_MAGIC || st == KVSHM_E_LAYOUT || st == KVSHM_E_SIZE);
        CHECK(r == NULL);
        return 0;
    }
    CHECK(h->rh_magic == KVSHM_MAGIC_RING && h->rh_layout_hash == good_hash &&
          h->rh_capacity == z->cap);
    CHECK(kvshm_ring_capacity(r) == z->cap);

    size_t e = 0;
    const uint8_t *cbase = NULL;
    for (int n = 0; n < 8192; n++) {
        uint32_t type, len;
        const void *payload;
        (void)kvshm_ring_has_data(r);
        st = kvshm_ring_peek(r, &type, &payload, &len);
        if (st == KVSHM_EMPTY || st == KVSHM_E_CORRUPT) break;   /* corrupt: client dropped */
        CHECK(st == KVSHM_OK && type != KVSHM_RING_PAD);
        const uint8_t *p = payload;
        /* The record's place in the consumer's own mapping (its address is
         * private to ring.c): the position consume moved past, less the
         * record. Every record of one mapping must agree on the data base,
         * which lies KVSHM_RING_HDR bytes into a page-aligned mapping. */
        uint64_t head = kvshm_ring_consume(r);
        uint64_t rec = (8 + (uint64_t)len + 7) & ~(uint64_t)7;
        uint64_t off = (head - rec) & (z->cap - 1);
        const uint8_t *base = p - 8 - off;
        CHECK(head % 8 == 0 && ((uintptr_t)base - KVSHM_RING_HDR) % 4096 == 0);
        CHECK(!cbase || base == cbase);
        cbase = base;
        CHECK(off + rec <= z->cap);
        if (e < nedit) {      /* the producer writes while the writer reads */
            const uint8_t *ed = edits + 4 * e++;
            uint16_t v = (uint16_t)rd(ed + 2, 2);
            switch (ed[0] % 4) {
            case 0: h->rh_tail += (uint64_t)(int16_t)v * 8; break;
            case 1: ((uint32_t *)(uintptr_t)(p - 8))[0] = v; break;
            case 2: ((uint32_t *)(uintptr_t)(p - 8))[1] = ed[1]; break;
            default: dat[(v + ed[1]) % z->cap] = ed[1]; break;
            }
        }
        /* decoded after consume here (the writer decodes first): the
         * payload stays valid until the release either way */
        if (writer_decode(type, p, len, base, base + z->cap) != 0) break;   /* dropped */
        if (n % 64 == 63) CHECK(kvshm_ring_release(r) == head);
    }
    uint64_t head = kvshm_ring_release(r);
    CHECK(h->rh_head == head && kvshm_ring_head(r) == head);
    kvshm_ring_set_committed(r, head);
    kvshm_ring_close(r);
    return 0;
}
