/* libdeflate (whole-buffer DEFLATE, zlib and gzip formats): pbkv's per-frame zlib compression. */
#include <libdeflate.h>
