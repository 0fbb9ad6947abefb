/*
 * proto.c -- the formats the writer process and the attach side agree on
 * besides the segment (kvshm/proto.h): the registry file's `name=value`
 * text, the key records of the submission ring and the control socket's
 * request packets.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvshm/ops.h"
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
    char cluster[32] = "";
    if (reg->cluster_node)
        snprintf(cluster, sizeof cluster, "cluster=%" PRIu64 "\n", reg->cluster_node);
    int n = snprintf(buf, cap,
                     "kvault-registry=1\nlayout=%s\ngeneration=%" PRIu64
                     "\npid=%d\ntable=%s\nsegment=%s\nslots=%s\nsocket=%s\n%sstate=%s\n",
                     layout, reg->generation, reg->pid, reg->table, reg->segment,
                     reg->slots, reg->socket, cluster, reg->state);
    if (n < 0 || (size_t)n >= cap) return -1;
    int e = snprintf(buf + n, cap - (size_t)n, "end=%d\n", n);
    return e < 0 || (size_t)e >= cap - (size_t)n ? -1 : n + e;
}

uint64_t kvshm_registry_cluster_node(const char *text)
{
    char v[32];
    return kvshm_registry_field(text, "cluster", v, sizeof v) ? 0 : strtoull(v, NULL, 10);
}

int kvshm_registry_complete(char *text)
{
    for (char *p = text; *p;) {
        if (!strncmp(p, "end=", 4)) {
            char *e;
            unsigned long long n = strtoull(p + 4, &e, 10);
            if (e == p + 4 || *e != '\n' || n != (unsigned long long)(p - text)) return 0;
            e[1] = 0;
            return 1;
        }
        if (!(p = strchr(p, '\n'))) return 0;
        p++;
    }
    return 0;
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

int kvshm_rec_check(uint32_t type, const void *payload, uint32_t len)
{
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    switch (type) {
    case KVSHM_REC_PUT:
    case KVSHM_REC_DEL:
    case KVSHM_REC_MISS:
        return kvshm_keyrec_decode(payload, len, &key, &klen, &val, &vlen);
    case KVSHM_REC_SYNC:
        return len == 0 ? 0 : -1;
    case KVSHM_REC_STATS:
        return len == KVSHM_REC_STATS_BYTES ? 0 : -1;
    default:
        return -1;
    }
}

int kvshm_msg_parse(const void *buf, size_t n, struct kvshm_msg *m, const uint8_t **payload,
                    const char **why)
{
    if (n < sizeof *m) { *why = "shorter than the message header"; return -1; }
    memcpy(m, buf, sizeof *m);
    if (m->m_magic != KVSHM_PROTO_MAGIC) { *why = "bad magic"; return -1; }
    if (m->m_len != n - sizeof *m) { *why = "payload length does not match the packet"; return -1; }
    *payload = (const uint8_t *)buf + sizeof *m;
    switch (m->m_type) {
    case KVSHM_MSG_ATTACH:
        if (m->m_len != sizeof(struct kvshm_attach_req)) { *why = "attach: bad request size"; return -1; }
        return 0;
    case KVSHM_MSG_PUT_FILE:
        if (m->m_len < 9 || m->m_len - 8 > KVSHM_MAX_KEY) {
            *why = "put_file: key missing or too long";
            return -1;
        }
        return 0;
    case KVSHM_MSG_FEATURE:
        if (m->m_len == 0 || m->m_len > KVSHM_FEATURE_MAX) { *why = "feature: bad name length"; return -1; }
        return 0;
    case KVSHM_MSG_CLUSTER:
        if (m->m_len == 0 || m->m_len > KVSHM_FEATURE_MAX) { *why = "cluster: bad request length"; return -1; }
        return 0;
    case KVSHM_MSG_EXEC:
    case KVSHM_MSG_EXEC_END: {
        const size_t idn = sizeof(struct kvshm_exec_id);
        struct kvshm_exec_id id;
        if (m->m_len < idn) { *why = "exec: operation id missing"; return -1; }
        memcpy(&id, *payload, idn);
        if (id.x_seq == 0) { *why = "exec: operation number 0"; return -1; }
        if (m->m_type == KVSHM_MSG_EXEC_END ? m->m_len != idn || m->m_arg
            : m->m_arg ? m->m_len != idn || m->m_arg > KVSHM_OP_MAX_BYTES
                       : m->m_len - idn < KVSHM_OP_HDR) {
            *why = "exec: bad operation size";
            return -1;
        }
        return 0;
    }
    case KVSHM_MSG_OPTIMIZE:
    case KVSHM_MSG_CHECKPOINT:
    case KVSHM_MSG_STATUS:
        if (m->m_len) { *why = "unexpected payload"; return -1; }
        return 0;
    default:
        *why = "unknown request type";
        return -1;
    }
}
