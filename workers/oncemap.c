/*
 * oncemap.c -- the executor's memory of the clients it served (exec.c,
 * exactly once): token -> number of the client's last operation applied.
 * Open addressing with linear probing and backward-shift deletion; the
 * tokens are random (getrandom), so their first 8 bytes are the hash.
 */
#include <stdlib.h>
#include <string.h>

#include "writer.h"

struct wr_oncemap {
    wr_once *slots;     /* cap entries; seq 0 marks a free one */
    size_t cap;         /* power of two, or 0 */
    size_t n;
};

static size_t home(const wr_oncemap *m, const uint8_t *token)
{
    uint64_t h;
    memcpy(&h, token, 8);
    return (size_t)h & (m->cap - 1);
}

static wr_once *probe(const wr_oncemap *m, const uint8_t *token, int *found)
{
    for (size_t i = home(m, token);; i = (i + 1) & (m->cap - 1)) {
        wr_once *e = &m->slots[i];
        if (!e->seq || !memcmp(e->token, token, KVSHM_EXEC_TOKEN)) {
            *found = e->seq != 0;
            return e;
        }
    }
}

wr_once *wr_oncemap_find(wr_oncemap *m, const uint8_t *token)
{
    int found;
    if (!m || !m->n) return NULL;
    wr_once *e = probe(m, token, &found);
    return found ? e : NULL;
}

/* Double the table (at 1/2 load). 0, or -1 out of memory. */
static int grow(wr_oncemap *m)
{
    size_t cap = m->cap ? 2 * m->cap : 64;
    wr_once *old = m->slots;
    size_t ocap = m->cap;
    if (!(m->slots = calloc(cap, sizeof *m->slots))) {
        m->slots = old;
        return -1;
    }
    m->cap = cap;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].seq) {
            int found;
            *probe(m, old[i].token, &found) = old[i];
        }
    free(old);
    return 0;
}

wr_once *wr_oncemap_add(wr_oncemap **mp, const uint8_t *token)
{
    wr_oncemap *m = *mp;
    if (!m && !(m = *mp = calloc(1, sizeof *m))) return NULL;
    if (2 * (m->n + 1) > m->cap && grow(m) != 0) return NULL;
    int found;
    wr_once *e = probe(m, token, &found);
    if (!found) {
        memcpy(e->token, token, KVSHM_EXEC_TOKEN);
        e->seq = 0;
        e->seen_ms = 0;
        m->n++;
    }
    return e;
}

/* Empty slot i, shifting back the entries of its probe run. */
static void remove_at(wr_oncemap *m, size_t i)
{
    size_t mask = m->cap - 1;
    for (size_t j = (i + 1) & mask; m->slots[j].seq; j = (j + 1) & mask) {
        size_t h = home(m, m->slots[j].token);
        /* j's entry may move to i when its home is not in (i, j] */
        if (((j - h) & mask) >= ((j - i) & mask)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    memset(&m->slots[i], 0, sizeof m->slots[i]);
    m->n--;
}

void wr_oncemap_del(wr_oncemap *m, const uint8_t *token)
{
    wr_once *e = wr_oncemap_find(m, token);
    if (e) remove_at(m, (size_t)(e - m->slots));
}

size_t wr_oncemap_expire(wr_oncemap *m, uint64_t before_ms)
{
    size_t dropped = 0;
    if (!m) return 0;
    for (size_t i = 0; i < m->cap;) {
        if (m->slots[i].seq && m->slots[i].seen_ms < before_ms) {
            remove_at(m, i);   /* slot i may now hold a shifted entry: look again */
            dropped++;
        } else {
            i++;
        }
    }
    return dropped;
}

void wr_oncemap_free(wr_oncemap *m)
{
    if (!m) return;
    free(m->slots);
    free(m);
}
