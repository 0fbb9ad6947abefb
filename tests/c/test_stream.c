/* test_stream.c - libkvault blob streaming: a 100 MiB file through
 * kv_put_fd / kv_get_to_fd with io_uring and with the plain fallback
 * (KV_NO_URING=1), callback variants, short input, missing keys. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <stdint.h>

#include "kvault/kvault.h"
#include "kvtest_util.h"

#define BIG (100u << 20)

static void fill_file(const char *p, size_t size)
{
    int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    cr_assert(fd >= 0);
    static uint32_t buf[1 << 16];
    uint32_t x = 2463534242u;
    for (size_t off = 0; off < size; off += sizeof buf) {
        for (size_t i = 0; i < sizeof buf / 4; i++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;   /* xorshift32 */
            buf[i] = x;
        }
        size_t n = size - off < sizeof buf ? size - off : sizeof buf;
        cr_assert(eq(sz, (size_t)write(fd, buf, n), n));
    }
    close(fd);
}

static int same_files(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    static char ba[1 << 16], bb[1 << 16];
    int same = fa && fb;
    while (same) {
        size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
        if (na != nb || memcmp(ba, bb, na))
            same = 0;
        if (na == 0)
            break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static void roundtrip_100mib(int uring)
{
    char dbp[600], src[700], dst[700], err[256];
    kv_db *db;
    kvtest_select_uring(uring);
    kvtest_path(dbp, sizeof dbp, "s.db");
    snprintf(src, sizeof src, "%s.src", dbp);
    snprintf(dst, sizeof dst, "%s.dst", dbp);
    fill_file(src, BIG);
    cr_assert(eq(int, kv_db_open(dbp, NULL, &db, err, sizeof err), KV_OK), "%s", err);
    int fd = open(src, O_RDONLY);
    cr_assert(eq(int, kv_put_fd(db, "file", 4, fd, BIG, 0), KV_OK), "%s", kv_db_errmsg(db));
    cr_assert(eq(i64, (int64_t)lseek(fd, 0, SEEK_CUR), (int64_t)BIG), "fd offset advanced");
    close(fd);
    if (!uring)
        cr_assert(eq(int, kv_stream_used_uring(db), 0));
    int out = open(dst, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    uint64_t w = 0;
    cr_assert(eq(int, kv_get_to_fd(db, "file", 4, out, 3 << 20, &w), KV_OK), "%s", kv_db_errmsg(db));
    cr_assert(eq(u64, w, BIG));
    if (!uring)
        cr_assert(eq(int, kv_stream_used_uring(db), 0));
    else
        cr_log_info("io_uring used: %d", kv_stream_used_uring(db));
    close(out);
    cr_assert(same_files(src, dst), "round trip must be byte-identical");
    cr_assert(eq(int, kv_get_to_fd(db, "nope", 4, 1, 0, &w), KV_NOTFOUND));
    kv_db_close(db);
    unlink(src);
    unlink(dst);
}

Test(stream, file_100mib_uring, .timeout = 300) { roundtrip_100mib(1); }
Test(stream, file_100mib_fallback, .timeout = 300) { roundtrip_100mib(0); }

typedef struct { uint8_t *p; size_t n; } dst_ctx;
static int wr(void *c, const void *buf, size_t len)
{
    dst_ctx *d = c;
    memcpy(d->p + d->n, buf, len);
    d->n += len;
    return 0;
}

Test(stream, callbacks_and_short_input)
{
    char dbp[600], err[256];
    kv_db *db;
    static uint8_t data[200000], back[200000];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 31);
    kvtest_path(dbp, sizeof dbp, "cb.db");
    cr_assert(eq(int, kv_db_open(dbp, NULL, &db, err, sizeof err), KV_OK));
    kvtest_src s = {data, sizeof data, 0, 777}; /* short reads are fine */
    cr_assert(eq(int, kv_put_stream(db, "k", 1, sizeof data, 4096, kvtest_src_read, &s), KV_OK));
    dst_ctx d = {back, 0};
    uint64_t w;
    cr_assert(eq(int, kv_get_stream(db, "k", 1, 5000, wr, &d, &w), KV_OK));
    cr_assert(eq(u64, w, sizeof data));
    cr_assert(eq(int, memcmp(data, back, sizeof data), 0));
    /* announced size larger than the input: KV_SHORT, zero tail kept */
    s = (kvtest_src){data, 1000, 0, 777};
    cr_assert(eq(int, kv_put_stream(db, "short", 5, 3000, 4096, kvtest_src_read, &s), KV_SHORT));
    cr_assert(eq(str, (char *)kv_db_errmsg(db), "short write: wrote 1000 of 3000 bytes"));
    const void *p;
    size_t n;
    cr_assert(eq(int, kv_get(db, "short", 5, &p, &n), KV_OK));
    cr_assert(eq(sz, n, 3000));
    cr_assert(eq(int, memcmp(p, data, 1000), 0));
    cr_assert(eq(u8, ((const uint8_t *)p)[2999], 0));
    kv_get_done(db);
    /* short regular file through the fd path */
    char src[700];
    snprintf(src, sizeof src, "%s.src", dbp);
    fill_file(src, 5000);
    int fd = open(src, O_RDONLY);
    cr_assert(eq(int, kv_put_fd(db, "f", 1, fd, 9000, 1024), KV_SHORT));
    close(fd);
    /* the cache is consulted first by get_to_fd / get_stream */
    kv_cache_enable(db, 1 << 20, 0);
    kv_put(db, "c", 1, "cached", 6);
    d = (dst_ctx){back, 0};
    cr_assert(eq(int, kv_get_stream(db, "c", 1, 0, wr, &d, &w), KV_OK));
    cr_assert(eq(u64, w, 6));
    kv_db_close(db);
}
