#ifndef PBKV_CZLIB_SHIM_H
#define PBKV_CZLIB_SHIM_H
#include <zlib.h>

/* zlib's deflateInit2/inflateInit2 are macros Swift cannot import. Raw deflate (negative
   windowBits: no zlib header or trailer), for the per-connection streams; whole frames go
   through libdeflate (CLibDeflate). */
static inline int pbkv_deflateInit2(z_streamp stream, int level, int windowBits, int memLevel) {
    return deflateInit2(stream, level, Z_DEFLATED, windowBits, memLevel, Z_DEFAULT_STRATEGY);
}
static inline int pbkv_inflateInit2(z_streamp stream, int windowBits) {
    return inflateInit2(stream, windowBits);
}
#endif
