/*
 * fuzz_msg.c -- libFuzzer target for the control socket's request packets
 * as the writer receives them (kvshm_msg_parse, shm/proto.c): every byte a
 * client sends, header fields included, is hostile.
 *
 * Input: one packet, exactly as recvmsg would return it.
 * Checks: an accepted packet has the protocol's magic, a request type, an
 * m_len equal to the bytes after the header, a payload pointer inside the
 * packet and the payload size its type requires (the handlers in
 * workers/clients.c rely on exactly these); a rejected one gets a non-empty
 * reason. The packet is copied to an exactly sized buffer so ASan reports
 * any read past it.
 *
 * Build and run: docs/fuzzing.md.
 */
#include <stdlib.h>
#include <string.h>

#include "kvshm/ops.h"
#include "kvshm/proto.h"

#define CHECK(e) do { if (!(e)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    CHECK(buf);
    memcpy(buf, data, size);
    struct kvshm_msg m;
    const uint8_t *pl = NULL;
    const char *why = NULL;
    if (kvshm_msg_parse(buf, size, &m, &pl, &why) == 0) {
        CHECK(size >= sizeof m && m.m_magic == KVSHM_PROTO_MAGIC);
        CHECK(m.m_len == size - sizeof m && pl == buf + sizeof m);
        switch (m.m_type) {
        case KVSHM_MSG_ATTACH:
            CHECK(m.m_len == sizeof(struct kvshm_attach_req));
            break;
        case KVSHM_MSG_PUT_FILE:
            CHECK(m.m_len >= 9 && m.m_len - 8 <= KVSHM_MAX_KEY);
            break;
        case KVSHM_MSG_FEATURE:
        case KVSHM_MSG_CLUSTER:
            CHECK(m.m_len >= 1 && m.m_len <= KVSHM_FEATURE_MAX);
            break;
        case KVSHM_MSG_OPTIMIZE:
        case KVSHM_MSG_CHECKPOINT:
        case KVSHM_MSG_STATUS:
            CHECK(m.m_len == 0);
            break;
        case KVSHM_MSG_EXEC: {   /* id, then the operation inline or its size in a memfd */
            const size_t idn = sizeof(struct kvshm_exec_id);
            struct kvshm_exec_id id;
            CHECK(m.m_len >= idn);
            memcpy(&id, pl, idn);
            CHECK(id.x_seq >= 1);
            CHECK(m.m_arg ? m.m_len == idn && m.m_arg <= KVSHM_OP_MAX_BYTES
                          : m.m_len >= idn + KVSHM_OP_HDR);
            break;
        }
        case KVSHM_MSG_EXEC_END: {
            struct kvshm_exec_id id;
            CHECK(m.m_len == sizeof id && m.m_arg == 0);
            memcpy(&id, pl, sizeof id);
            CHECK(id.x_seq >= 1);
            break;
        }
        default:
            abort();
        }
        /* touch every payload byte the handlers may read */
        volatile uint8_t sink = 0;
        for (uint32_t i = 0; i < m.m_len; i++) sink ^= pl[i];
        (void)sink;
    } else {
        CHECK(why && *why);
    }
    free(buf);
    return 0;
}
