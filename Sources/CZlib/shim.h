#ifndef PBKV_CZLIB_SHIM_H
#define PBKV_CZLIB_SHIM_H
#include <zlib.h>

/* zlib's deflateInit/inflateInit are macros Swift cannot import. */
static inline int pbkv_deflateInit(z_streamp stream, int level) {
    return deflateInit(stream, level);
}
static inline int pbkv_inflateInit(z_streamp stream) {
    return inflateInit(stream);
}
#endif
