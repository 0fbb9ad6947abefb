/*
 * fuzz_registry.c -- libFuzzer target for the text and record formats of
 * shm/proto.c that cross a process boundary: the registry file `<db>-kvault`
 * (kvshm_registry_field, kvshm_registry_layout_ok, kvshm_registry_format,
 * kvshm_registry_complete)
 * and the submission ring's key records (kvshm_keyrec_encode / _decode).
 *
 * Input: a field name, NUL, the registry text, NUL, then a record payload.
 * Checks: a field found is NUL-terminated, shorter than the buffer, free of
 * newlines, and is the value of a line `name=value` of the text; a registry
 * formatted from values without newlines reads back field by field and is
 * complete; the completeness check of any text only ever shortens it; a key
 * record encoded from the input's bytes decodes to the same key and value;
 * decoding the raw payload yields a key of 1..KVSHM_MAX_KEY bytes and a
 * value inside the payload.
 *
 * Build and run: docs/fuzzing.md.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvshm/proto.h"

#define CHECK(e) do { if (!(e)) abort(); } while (0)

/* 1 if `text` has a line that is exactly name=value. */
static int has_line(const char *text, const char *name, const char *value)
{
    size_t n = strlen(name), v = strlen(value);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == '=' && !strncmp(p + n + 1, value, v) &&
            (p[n + 1 + v] == '\n' || p[n + 1 + v] == 0))
            return 1;
    return 0;
}

static void field_check(const char *text, const char *name, size_t cap)
{
    char *out = malloc(cap ? cap : 1);   /* exactly sized: ASan sees an overrun */
    CHECK(out);
    if (cap && kvshm_registry_field(text, name, out, cap) == 0) {
        size_t l = strnlen(out, cap);
        CHECK(l < cap && !strchr(out, '\n'));
        CHECK(has_line(text, name, out));
    }
    free(out);
}

/* A registry built from the text's first lines reads back. */
static void format_roundtrip(const char *text)
{
    char part[7][64] = {{0}};
    const char *p = text;
    for (int i = 0; i < 7 && p; i++) {
        const char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l > 63) l = 63;
        memcpy(part[i], p, l);
        p = e ? e + 1 : NULL;
    }
    kvshm_registry reg = {.generation = strlen(text), .pid = (int)strlen(part[0]),
                          .table = part[1], .segment = part[2], .slots = part[3],
                          .socket = part[4], .state = part[5]};
    char buf[1024], v[128], want[32];
    int n = kvshm_registry_format(&reg, buf, sizeof buf);
    CHECK(n > 0 && (size_t)n == strlen(buf));
    CHECK(kvshm_registry_layout_ok(buf));
    static const char *const names[] = {"table", "segment", "slots", "socket", "state"};
    const char *vals[] = {reg.table, reg.segment, reg.slots, reg.socket, reg.state};
    for (int i = 0; i < 5; i++) {
        CHECK(kvshm_registry_field(buf, names[i], v, sizeof v) == 0);
        CHECK(strcmp(v, vals[i]) == 0);
    }
    snprintf(want, sizeof want, "%" PRIu64, reg.generation);
    CHECK(kvshm_registry_field(buf, "generation", v, sizeof v) == 0 && !strcmp(v, want));
    snprintf(want, sizeof want, "%d", reg.pid);
    CHECK(kvshm_registry_field(buf, "pid", v, sizeof v) == 0 && !strcmp(v, want));
    CHECK(kvshm_registry_complete(buf) == 1 && strlen(buf) == (size_t)n);
    CHECK(kvshm_registry_format(&reg, buf, (size_t)n) == -1);   /* no room for the NUL */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *z1 = memchr(data, 0, size);
    if (!z1) return 0;
    const uint8_t *z2 = memchr(z1 + 1, 0, size - (size_t)(z1 + 1 - data));
    if (!z2) return 0;
    size_t nlen = (size_t)(z1 - data), tlen = (size_t)(z2 - z1 - 1);
    size_t plen = size - (size_t)(z2 + 1 - data);
    char *name = malloc(nlen + 1), *text = malloc(tlen + 1);
    uint8_t *pl = malloc(plen ? plen : 1);
    CHECK(name && text && pl);
    memcpy(name, data, nlen + 1);
    memcpy(text, z1 + 1, tlen + 1);
    memcpy(pl, z2 + 1, plen);

    field_check(text, name, 1 + (plen ? pl[0] : 0));
    field_check(text, "layout", 17);
    (void)kvshm_registry_layout_ok(text);
    static const char *const fields[] = {"kvault-registry", "generation", "pid", "table",
                                         "segment", "slots", "socket", "state"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) field_check(text, fields[i], 64);
    format_roundtrip(text);
    size_t before = strlen(text);
    if (kvshm_registry_complete(text)) CHECK(strlen(text) <= before);
    else CHECK(strlen(text) == before);

    /* key records: the raw payload, then an encode/decode round trip */
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    if (kvshm_keyrec_decode(pl, (uint32_t)plen, &key, &klen, &val, &vlen) == 0) {
        CHECK(klen >= 1 && klen <= KVSHM_MAX_KEY && key == pl + KVSHM_REC_KEYHDR);
        CHECK(val == key + klen && (size_t)(val - pl) + vlen == plen);
    }
    if (plen >= 1) {
        uint32_t k = 1 + (uint32_t)(pl[0] % (plen < KVSHM_MAX_KEY ? plen : KVSHM_MAX_KEY));
        if (k > plen) k = (uint32_t)plen;
        uint32_t vl = (uint32_t)plen - k;
        size_t rb = kvshm_keyrec_bytes(k, vl);
        uint8_t *rec = malloc(rb);
        CHECK(rec);
        kvshm_keyrec_encode(rec, pl, k, pl + k, vl);
        CHECK(kvshm_keyrec_decode(rec, (uint32_t)rb, &key, &klen, &val, &vlen) == 0);
        CHECK(klen == k && vlen == vl && !memcmp(key, pl, k) && !memcmp(val, pl + k, vl));
        free(rec);
    }
    free(name);
    free(text);
    free(pl);
    return 0;
}
