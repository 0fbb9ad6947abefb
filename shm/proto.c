/*
 * proto.c -- the formats the writer process and the attach side agree on
 * besides the segment (kvshm/proto.h): the registry file's `name=value`
 * text and the key records of the submission ring.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "kvshm/proto.h"
#include "layout.h"

int kvshm_registry_field(const char *text, const char *name, char *out, size_t cap)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p;) {
        if (!strncmp(p, name, n) && p[n] == '=') {
            const char *v = p + n + 1, *e = strchr(v, '\n');
            size_t len = e ? (size_t)(e - v) : strlen(v);
            if (len >= cap) return -1;
            memcpy(out, v, len);
            out[len] = 0;
            return 0;
        }
        p = strchr(p, '\n');
        if (p) p++;
    }
    return -1;
}

/* The registry's layout line of this build: 16 hex digits. */
static void layout_text(char out[17])
{
    snprintf(out, 17, "%016" PRIx64, kvshm_layout_hash());
}

int kvshm_registry_format(const kvshm_registry *reg, char *buf, size_t cap)
{
    char layout[17];
    layout_text(layout);
    int n = snprintf(buf, cap,
                     "kvault-registry=1\nlayout=%s\ngeneration=%" PRIu64
                     "\npid=%d\ntable=%s\nsegment=%s\nslots=%s\nsocket=%s\nstate=%s\n",
                     layout, reg->generation, reg->pid, reg->table, reg->segment,
                     reg->slots, reg->socket, reg->state);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

int kvshm_registry_layout_ok(const char *text)
{
    char layout[32], want[17];
    layout_text(want);
    return !kvshm_registry_field(text, "layout", layout, sizeof layout) && !strcmp(layout, want);
}

void kvshm_keyrec_encode(void *dst, const void *key, uint32_t klen, const void *val,
                         uint32_t vlen)
{
    uint32_t hdr[2] = {klen, 0};
    memcpy(dst, hdr, sizeof hdr);
    memcpy((uint8_t *)dst + KVSHM_REC_KEYHDR, key, klen);
    if (vlen) memcpy((uint8_t *)dst + KVSHM_REC_KEYHDR + klen, val, vlen);
}

int kvshm_keyrec_decode(const void *payload, uint32_t len, const uint8_t **key,
                        uint32_t *klen, const uint8_t **val, uint32_t *vlen)
{
    if (len < KVSHM_REC_KEYHDR) return -1;
    uint32_t k;
    memcpy(&k, payload, 4);
    if (k == 0 || k > KVSHM_MAX_KEY || k > len - KVSHM_REC_KEYHDR) return -1;
    *key = (const uint8_t *)payload + KVSHM_REC_KEYHDR;
    *klen = k;
    *val = *key + k;
    *vlen = len - KVSHM_REC_KEYHDR - k;
    return 0;
}
