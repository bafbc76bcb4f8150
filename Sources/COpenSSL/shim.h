#ifndef PBKV_COPENSSL_SHIM_H
#define PBKV_COPENSSL_SHIM_H
/* The system's OpenSSL (3.x): libcrypto for `pbkv certs` and for reading a peer certificate's
 * pbkv identity, libssl for mutual TLS between members. The helpers below stand in for macros
 * and variadic calls Swift cannot import. */
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* A new ECDSA P-256 key. */
static inline EVP_PKEY *pbkv_generate_p256_key(void) {
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

/* The bytes written to a memory BIO so far. */
static inline long pbkv_bio_contents(BIO *bio, char **data) {
    return BIO_get_mem_data(bio, data);
}

static inline void pbkv_free(void *pointer) {
    OPENSSL_free(pointer);
}

/* Adds the extension `nid` given in OpenSSL's configuration syntax ("critical,CA:TRUE"),
 * with `issuer` as the issuing certificate (for key identifiers). 1 on success. */
static inline int pbkv_add_extension(X509 *certificate, X509 *issuer, int nid, const char *value) {
    X509V3_CTX context;
    X509V3_set_ctx_nodb(&context);
    X509V3_set_ctx(&context, issuer, certificate, NULL, NULL, 0);
    X509_EXTENSION *extension = X509V3_EXT_conf_nid(NULL, &context, nid, value);
    if (extension == NULL) return 0;
    int added = X509_add_ext(certificate, extension, -1);
    X509_EXTENSION_free(extension);
    return added;
}

/* Appends a name of `type` (GEN_URI, GEN_DNS: text; GEN_IPADD: 4 or 16 bytes) to `names`. */
static inline int pbkv_general_names_append(GENERAL_NAMES *names, int type, const unsigned char *bytes, int length) {
    ASN1_STRING *value = type == GEN_IPADD ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
    if (value == NULL) return 0;
    if (!ASN1_STRING_set(value, bytes, length)) { ASN1_STRING_free(value); return 0; }
    GENERAL_NAME *name = GENERAL_NAME_new();
    if (name == NULL) { ASN1_STRING_free(value); return 0; }
    GENERAL_NAME_set0_value(name, type, value);
    if (!sk_GENERAL_NAME_push(names, name)) { GENERAL_NAME_free(name); return 0; }
    return 1;
}

static inline int pbkv_general_names_count(const GENERAL_NAMES *names) {
    return sk_GENERAL_NAME_num(names);
}

/* The name at `index`: its type, and its bytes (URI, DNS and email names are text). */
static inline const unsigned char *pbkv_general_name_at(const GENERAL_NAMES *names, int index, int *type, int *length) {
    const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, index);
    int kind = 0;
    const ASN1_STRING *value = GENERAL_NAME_get0_value(name, &kind);
    *type = kind;
    if (kind != GEN_URI && kind != GEN_DNS && kind != GEN_IPADD && kind != GEN_EMAIL) { *length = 0; return NULL; }
    *length = ASN1_STRING_length(value);
    return ASN1_STRING_get0_data(value);
}

/* The certificate's subject alternative names (free with GENERAL_NAMES_free), or NULL. */
static inline GENERAL_NAMES *pbkv_subject_alternative_names(const X509 *certificate) {
    return X509_get_ext_d2i(certificate, NID_subject_alt_name, NULL, NULL);
}

/* TLS 1.2 at least, AES-128-GCM first (pbkv's records are small: the cheapest suite per record);
 * no session cache (members keep their connections; resumption buys nothing). */
static inline int pbkv_ssl_ctx_configure(SSL_CTX *context) {
    if (!SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION)) return 0;
    if (!SSL_CTX_set_ciphersuites(context, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384")) return 0;
    SSL_CTX_set_session_cache_mode(context, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(context, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE);
    return SSL_CTX_set_num_tickets(context, 0);
}

/* Adds an intermediate certificate to the chain the context presents. 1 on success. */
static inline int pbkv_ssl_ctx_add_chain_certificate(SSL_CTX *context, X509 *certificate) {
    return (int)SSL_CTX_add1_chain_cert(context, certificate);
}
#endif
