/*
 * fuzz_resp.c -- libFuzzer target for kvault-reader's RESP2 parser and glob
 * matcher (workers/resp.c). The input is parsed request after request as
 * kvault-reader does with a connection's input, under small limits so the
 * limit paths are reached too; every argument must lie inside the input and
 * every consumed length within it. The input also serves as a glob pattern
 * and subject (split at its first NUL byte).
 *
 * Build (clang only) and run: see docs/resp.md, "Fuzzing".
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exactly sized copy: AddressSanitizer reports any read past it */
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    resp_limits lim = {.max_bulk = 4096, .max_args = 64, .max_inline = 1024};
    resp_argv argv = {0};
    size_t pos = 0;
    while (pos < size) {
        size_t used;
        const char *err;
        resp_result r = resp_parse(buf + pos, size - pos, &lim, &argv, &used, &err);
        if (r != RESP_OK) {
            if (r == RESP_EPROTO && (!err || strncmp(err, "ERR Protocol error: ", 20))) abort();
            break;
        }
        if (used == 0 || used > size - pos) abort();
        for (size_t i = 0; i < argv.n; i++)
            if (argv.v[i].p < buf + pos || argv.v[i].p + argv.v[i].len > buf + pos + used) abort();
        pos += used;
    }
    resp_argv_free(&argv);
    const char *nul = memchr(buf, 0, size);
    size_t plen = nul ? (size_t)(nul - buf) : size;
    size_t slen = nul ? size - plen - 1 : 0;
    (void)resp_glob_match(buf, plen, nul ? nul + 1 : buf + size, slen);
    if (resp_glob_prefix(buf, plen) > plen) abort();
    free(buf);
    return 0;
}
