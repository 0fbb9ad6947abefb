/*
 * col_cache.c - the per-column write-back cache of appends (docs/api.md §6.7).
 *
 * The cache holds packed elements back to back (plus each element's length
 * for a variable-size column). An append that would push the buffer past
 * cap_bytes first flushes it; once the buffer reaches flush_threshold it is
 * flushed. Every other operation flushes first (kv_col_* in col_fixed.c),
 * and so do reads, so a read never misses cached data. A flush is one
 * transaction appending the buffer at the stored length; on failure the
 * buffer is kept and the stored column is unchanged.
 *
 * Locking: all state is guarded by the vault mutex cv->mu.
 */
#include "col_internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

double kvi_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

kv_status kvi_cache_flush_locked(kv_col *col, size_t *flushed)
{
    size_t bytes = col->cbuf.len;
    kv_status st;
    if (flushed)
        *flushed = 0;
    if (!col->cache_on || col->cn == 0)
        return KV_OK;
    st = kvi_col_append_direct(col, col->cbuf.data, col->clens, col->cn);
    if (st != KV_OK)
        return st;
    col->cbuf.len = 0;
    col->cn = 0;
    if (flushed)
        *flushed = bytes;
    return KV_OK;
}

kv_status kvi_cache_append_locked(kv_col *col, const void *data, const size_t *lens, size_t n)
{
    size_t bytes = 0;
    kv_status st;
    if (col->is_var)
        for (size_t i = 0; i < n; i++)
            bytes += lens[i];
    else
        bytes = n * (size_t)col->fx.elem;
    if (col->cn && col->cbuf.len + bytes > col->cache_cap) {
        st = kvi_cache_flush_locked(col, NULL);
        if (st != KV_OK)
            return st;
    }
    if (bytes > col->cache_cap) /* larger than the whole cache: write through */
        return kvi_col_append_direct(col, data, lens, n);
    if (col->is_var && col->cn + n > col->ccap) {
        size_t nc = col->ccap ? col->ccap : 64;
        while (nc < col->cn + n)
            nc *= 2;
        size_t *nl = kvi_realloc(col->clens, nc * sizeof *nl);
        if (!nl)
            return KV_NOMEM;
        col->clens = nl;
        col->ccap = nc;
    }
    st = kv_buf_append(&col->cbuf, data, bytes);
    if (st != KV_OK)
        return st;
    if (col->is_var)
        memcpy(col->clens + col->cn, lens, n * sizeof *lens);
    col->cn += n;
    col->last_write_s = kvi_now_s();
    if (col->cbuf.len >= col->cache_thresh)
        return kvi_cache_flush_locked(col, NULL);
    return KV_OK;
}

kv_status kv_col_cache_enable(kv_col *col, size_t cap_bytes, size_t flush_threshold)
{
    kv_status st = KV_OK;
    pthread_mutex_lock(&col->cv->mu);
    if (col->cache_on)
        st = kvi_cache_flush_locked(col, NULL);
    if (st == KV_OK) {
        col->cache_on = 1;
        col->cache_cap = cap_bytes;
        col->cache_thresh = flush_threshold;
        col->last_write_s = kvi_now_s();
    }
    pthread_mutex_unlock(&col->cv->mu);
    return st;
}

kv_status kv_col_cache_disable(kv_col *col)
{
    kv_status st = KV_OK;
    pthread_mutex_lock(&col->cv->mu);
    if (col->cache_on) {
        st = kvi_cache_flush_locked(col, NULL);
        if (st == KV_OK) {
            col->cache_on = 0;
            kv_buf_free(&col->cbuf);
            kvi_free(col->clens);
            col->clens = NULL;
            col->ccap = 0;
        }
    }
    pthread_mutex_unlock(&col->cv->mu);
    return st;
}

kv_status kv_col_cache_flush(kv_col *col, size_t *flushed)
{
    pthread_mutex_lock(&col->cv->mu);
    kv_status st = kvi_cache_flush_locked(col, flushed);
    pthread_mutex_unlock(&col->cv->mu);
    return st;
}

int kv_col_cache_enabled(kv_col *col)
{
    pthread_mutex_lock(&col->cv->mu);
    int on = col->cache_on;
    pthread_mutex_unlock(&col->cv->mu);
    return on;
}

double kv_col_cache_idle_s(kv_col *col)
{
    pthread_mutex_lock(&col->cv->mu);
    double v = col->cache_on ? kvi_now_s() - col->last_write_s : 0.0;
    pthread_mutex_unlock(&col->cv->mu);
    return v;
}

size_t kv_col_cache_pending(kv_col *col)
{
    pthread_mutex_lock(&col->cv->mu);
    size_t n = col->cache_on ? col->cn : 0;
    pthread_mutex_unlock(&col->cv->mu);
    return n;
}

kv_status kv_col_cache_copy(kv_col *col, kv_buf *data, size_t **lens, size_t *n)
{
    kv_status st = KV_OK;
    *lens = NULL;
    *n = 0;
    pthread_mutex_lock(&col->cv->mu);
    if (col->cache_on && col->cn) {
        if (col->is_var && !(*lens = malloc(col->cn * sizeof **lens)))
            st = KV_NOMEM;
        if (st == KV_OK)
            st = kv_buf_append(data, col->cbuf.data, col->cbuf.len);
        if (st == KV_OK) {
            if (col->is_var)
                memcpy(*lens, col->clens, col->cn * sizeof **lens);
            *n = col->cn;
        } else {
            free(*lens);
            *lens = NULL;
        }
    }
    pthread_mutex_unlock(&col->cv->mu);
    return st;
}

void kv_col_cache_discard(kv_col *col)
{
    pthread_mutex_lock(&col->cv->mu);
    col->cbuf.len = 0;
    col->cn = 0;
    pthread_mutex_unlock(&col->cv->mu);
}
