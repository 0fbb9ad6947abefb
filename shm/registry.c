/*
 * registry.c -- reading the registry file's `name=value` text (format in
 * kvshm/proto.h), shared by the attach side and the writer.
 */
#include <string.h>

#include "kvshm/proto.h"

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
