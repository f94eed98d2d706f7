/* libFuzzer target: the zTOC reader. Any bytes: parse, then walk every digest, file and xattr;
 * each string must lie inside the input. Then `ztoc info`'s formatter, both span rules: it
 * succeeds or says why, and its text is printable ASCII and newlines. */
#include <stdlib.h>
#include <string.h>

#include "ztoc_info.h"
#include "ztoc_read.h"

static void inside(const uint8_t *data, size_t size, sn_bytes b) {
    if (b.n && (b.p < data || b.p + b.n > data + size)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sn_ztoc z;
    sn_err err = {0};
    if (sn_ztoc_parse(data, size, &z, &err)) {
        if (!err.msg[0]) abort(); /* errors always say what */
        return 0;
    }
    inside(data, size, z.version);
    inside(data, size, z.build_tool);
    inside(data, size, z.checkpoints);
    for (uint32_t i = 0; i < z.ndigests; i++) {
        sn_bytes d;
        sn_err e = {0};
        if (!sn_ztoc_digest(&z, i, &d, &e)) inside(data, size, d);
    }
    for (uint32_t i = 0; i < z.nfiles; i++) {
        sn_ztoc_file f;
        sn_err e = {0};
        if (sn_ztoc_file_at(&z, i, &f, &e)) continue;
        sn_bytes all[] = {f.name, f.type, f.linkname, f.uname, f.gname, f.mod_time};
        for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) inside(data, size, all[k]);
        for (uint32_t j = 0; j < f.nxattrs; j++) {
            sn_bytes key, value;
            sn_err e2 = {0};
            if (!sn_ztoc_xattr(&z, &f, j, &key, &value, &e2)) {
                inside(data, size, key);
                inside(data, size, value);
            }
        }
    }
    for (int64_t step = 0; step <= 4096; step += 4096) {
        sn_ztoc z2;
        sn_err e = {0};
        sn_buf out = {0};
        sn_ztoc_info info;
        if (sn_ztoc_parse(data, size, &z2, &e)) abort(); /* it parsed above */
        if (sn_ztoc_info_files(&z2, step, &out, &info, &e)) {
            if (!e.msg[0]) abort();
        } else {
            for (size_t k = 0; k < out.len; k++)
                if (out.p[k] != '\n' && (out.p[k] < 0x20 || out.p[k] > 0x7e)) abort();
            if (info.overlap >= 0 && out.len) abort(); /* nothing written on a refusal */
        }
        sn_buf_free(&out);
    }
    return 0;
}
