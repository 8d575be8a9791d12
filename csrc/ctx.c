/*
 * ctx.c -- tp_ctx: the configuration shared by many connections.
 * Secure by default: TLS >= 1.2, clients verify chain and hostname, no
 * renegotiation, no compression, OpenSSL's default ciphers.
 */
#include "internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct tp_ctx {
    int refs;
    tp_role role;
    SSL_CTX *ssl;
    int verify;
    int ephemeral;
    size_t write_limit;
    char fingerprint[65];
    char *cert_pem;
    unsigned char *alpn_wire; /* server: protocols we accept, wire format */
    unsigned alpn_len;
};

void tp_ctx_options_init(tp_ctx_options *o)
{
    memset(o, 0, sizeof *o);
    o->verify = 1;
    o->min_version = TP_TLS1_2;
}

SSL_CTX *tp__ctx_ssl(const tp_ctx *ctx)
{
    return ctx->ssl;
}

size_t tp__ctx_write_limit(const tp_ctx *ctx)
{
    return ctx->write_limit;
}

int tp__ctx_verifies(const tp_ctx *ctx)
{
    return ctx->role == TP_CLIENT && ctx->verify;
}

tp_role tp_ctx_role(const tp_ctx *ctx)
{
    return ctx->role;
}

const char *tp_ctx_fingerprint(const tp_ctx *ctx)
{
    return ctx->fingerprint[0] ? ctx->fingerprint : NULL;
}

int tp_ctx_is_ephemeral(const tp_ctx *ctx)
{
    return ctx->ephemeral;
}

const char *tp_ctx_cert_pem(const tp_ctx *ctx)
{
    return ctx->cert_pem;
}

/* The last OpenSSL error's reason, or a fallback. */
static const char *ssl_reason(const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : fallback;
}

static int is_pem_text(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && isspace((unsigned char)s[i]))
        i++;
    return len - i >= 10 && memcmp(s + i, "-----BEGIN", 10) == 0;
}

/*
 * Opens a PEM source: text in memory or a file (whose failure is reported
 * with its path and errno text). what names it in errors ("certificate").
 */
static BIO *open_pem(const char *src, size_t len, const char *what,
                     char *errbuf, size_t errlen)
{
    if (len == 0)
        len = strlen(src);
    if (is_pem_text(src, len))
        return BIO_new_mem_buf(src, (int)len);
    char path[4096];
    if (len >= sizeof path || memchr(src, '\0', len)) {
        tp__errbuf(errbuf, errlen, "%s: invalid file name", what);
        return NULL;
    }
    memcpy(path, src, len);
    path[len] = '\0';
    BIO *b = BIO_new_file(path, "r");
    if (!b) {
        tp__errbuf(errbuf, errlen, "cannot read %s file '%s': %s", what, path,
                   strerror(errno ? errno : ENOENT));
        return NULL;
    }
    return b;
}

/* Refuses to prompt on a terminal for a passphrase. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

static int load_cert_and_key(SSL_CTX *ssl, const tp_ctx_options *o,
                             X509 **leaf_out, char *errbuf, size_t errlen)
{
    X509 *leaf = NULL;
    EVP_PKEY *key = NULL;
    STACK_OF(X509) *chain = sk_X509_new_null();
    int ok = -1;
    BIO *b = open_pem(o->cert, o->cert_len, "certificate", errbuf, errlen);
    if (!b)
        goto out;
    ERR_clear_error();
    leaf = PEM_read_bio_X509_AUX(b, NULL, no_passphrase, NULL);
    if (!leaf) {
        tp__errbuf(errbuf, errlen, "no certificate found in %s: %s",
                   is_pem_text(o->cert, o->cert_len ? o->cert_len
                                                    : strlen(o->cert))
                       ? "the PEM text"
                       : o->cert,
                   ssl_reason("no PEM certificate"));
        goto out;
    }
    for (X509 *x; (x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL));)
        sk_X509_push(chain, x);
    ERR_clear_error();
    BIO_free(b);
    /* The key: its own source, or the same one as the certificate. */
    const char *ksrc = o->key ? o->key : o->cert;
    size_t klen = o->key ? o->key_len : o->cert_len;
    b = open_pem(ksrc, klen, "private key", errbuf, errlen);
    if (!b)
        goto out;
    key = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
    if (!key) {
        const char *shown =
            is_pem_text(ksrc, klen ? klen : strlen(ksrc)) ? "the PEM text"
                                                           : ksrc;
        tp__errbuf(errbuf, errlen,
                   o->key ? "cannot load the private key from %s: %s"
                          : "no private key in %s (%s); pass key=",
                   shown, ssl_reason("no PEM private key"));
        goto out;
    }
    ERR_clear_error();
    if (!X509_check_private_key(leaf, key)) {
        tp__errbuf(errbuf, errlen,
                   "the private key does not match the certificate");
        goto out;
    }
    if (!SSL_CTX_use_cert_and_key(ssl, leaf, key, chain, 1)) {
        tp__errbuf(errbuf, errlen, "cannot use the certificate: %s",
                   ssl_reason("unknown error"));
        goto out;
    }
    *leaf_out = leaf;
    leaf = NULL;
    ok = 0;
out:
    BIO_free(b);
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    return ok;
}

/* Adds the certificates of a PEM source to the verification store. When
 * names is given, their subjects are collected (client CA list). */
static int load_ca(SSL_CTX *ssl, const char *src, size_t len,
                   STACK_OF(X509_NAME) *names, char *errbuf, size_t errlen)
{
    BIO *b = open_pem(src, len, "CA", errbuf, errlen);
    if (!b)
        return -1;
    X509_STORE *store = SSL_CTX_get_cert_store(ssl);
    int n = 0;
    for (X509 *x; (x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL));) {
        X509_STORE_add_cert(store, x);
        if (names)
            sk_X509_NAME_push(names, X509_NAME_dup(X509_get_subject_name(x)));
        X509_free(x);
        n++;
    }
    ERR_clear_error();
    BIO_free(b);
    if (n == 0) {
        tp__errbuf(errbuf, errlen, "no certificate found in the CA %s",
                   is_pem_text(src, len ? len : strlen(src)) ? "PEM text"
                                                             : src);
        return -1;
    }
    return 0;
}

/* "h2,http/1.1" -> wire format (length-prefixed). */
static unsigned char *alpn_wire(const char *list, unsigned *out_len,
                                char *errbuf, size_t errlen)
{
    size_t n = strlen(list);
    unsigned char *w = malloc(n + 1);
    size_t pos = 0;
    const char *p = list;
    while (w && *p) {
        const char *end = strchr(p, ',');
        size_t l = end ? (size_t)(end - p) : strlen(p);
        if (l == 0 || l > 255) {
            tp__errbuf(errbuf, errlen,
                       "invalid ALPN protocol list '%s': empty or too long "
                       "name",
                       list);
            free(w);
            return NULL;
        }
        w[pos++] = (unsigned char)l;
        memcpy(w + pos, p, l);
        pos += l;
        p += l + (end ? 1 : 0);
        if (end && !*p) {
            tp__errbuf(errbuf, errlen, "invalid ALPN protocol list '%s'", list);
            free(w);
            return NULL;
        }
    }
    if (w && pos == 0) {
        tp__errbuf(errbuf, errlen, "empty ALPN protocol list");
        free(w);
        return NULL;
    }
    *out_len = (unsigned)pos;
    return w;
}

static int alpn_select(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    tp_ctx *ctx = arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, ctx->alpn_wire, ctx->alpn_len, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Warns (stderr) when a key file is readable by group or others. */
static void warn_key_permissions(const tp_ctx_options *o)
{
    const char *k = o->key ? o->key : o->cert;
    size_t kl = o->key ? o->key_len : o->cert_len;
    if (kl == 0)
        kl = strlen(k);
    char path[4096];
    if (is_pem_text(k, kl) || kl >= sizeof path)
        return;
    memcpy(path, k, kl);
    path[kl] = '\0';
    struct stat st;
    if (stat(path, &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)))
        fprintf(stderr,
                "tlspump: warning: private key file '%s' is accessible by "
                "group or others (mode %03o); chmod 600 it\n",
                path, (unsigned)(st.st_mode & 0777));
}

tp_ctx *tp_ctx_new(tp_role role, const tp_ctx_options *o, char *errbuf,
                   size_t errlen)
{
    tp_ctx_options defaults;
    if (!o) {
        tp_ctx_options_init(&defaults);
        o = &defaults;
    }
    tp__errbuf(errbuf, errlen, "%s", "");
    if (role != TP_SERVER && role != TP_CLIENT) {
        tp__errbuf(errbuf, errlen, "invalid role %d", (int)role);
        return NULL;
    }
    if (o->min_version != TP_TLS1_2 && o->min_version != TP_TLS1_3) {
        tp__errbuf(errbuf, errlen,
                   "invalid minimum TLS version 0x%04x (TLSv1.2 or TLSv1.3)",
                   (unsigned)o->min_version);
        return NULL;
    }
    if (o->key && !o->cert) {
        tp__errbuf(errbuf, errlen, "a key was given without a certificate");
        return NULL;
    }
    tp_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        tp__errbuf(errbuf, errlen, "out of memory");
        return NULL;
    }
    ctx->refs = 1;
    ctx->role = role;
    ctx->verify = o->verify;
    ctx->write_limit = o->write_buffer ? o->write_buffer : (size_t)1 << 20;
    ERR_clear_error();
    SSL_CTX *ssl = SSL_CTX_new(role == TP_SERVER ? TLS_server_method()
                                                 : TLS_client_method());
    ctx->ssl = ssl;
    if (!ssl) {
        tp__errbuf(errbuf, errlen, "cannot create an SSL context: %s",
                   ssl_reason("unknown error"));
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ssl, o->min_version);
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* The write buffer belongs to tp_conn and may move between retries;
     * idle connections give their record buffers back. */
    SSL_CTX_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ssl, no_passphrase);

    X509 *leaf = NULL;
    if (o->cert) {
        if (load_cert_and_key(ssl, o, &leaf, errbuf, errlen) < 0)
            goto fail;
        warn_key_permissions(o);
    } else if (role == TP_SERVER) {
        EVP_PKEY *key = NULL;
        if (tp__ephemeral_cert(&leaf, &key, errbuf, errlen) < 0)
            goto fail;
        int used = SSL_CTX_use_certificate(ssl, leaf) &&
                   SSL_CTX_use_PrivateKey(ssl, key);
        EVP_PKEY_free(key);
        if (!used) {
            X509_free(leaf);
            tp__errbuf(errbuf, errlen, "cannot use the ephemeral certificate");
            goto fail;
        }
        ctx->ephemeral = 1;
    }
    if (leaf) {
        tp__cert_fingerprint(leaf, ctx->fingerprint);
        ctx->cert_pem = tp__cert_pem(leaf);
        X509_free(leaf);
    }

    if (role == TP_CLIENT) {
        if (o->ca && load_ca(ssl, o->ca, o->ca_len, NULL, errbuf, errlen) < 0)
            goto fail;
        if (o->ca_dir && !SSL_CTX_load_verify_dir(ssl, o->ca_dir)) {
            tp__errbuf(errbuf, errlen, "cannot use CA directory '%s'",
                       o->ca_dir);
            goto fail;
        }
        if (!o->ca && !o->ca_dir)
            SSL_CTX_set_default_verify_paths(ssl);
        SSL_CTX_set_verify(ssl, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
                           NULL);
    } else if (o->client_ca) {
        STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
        if (load_ca(ssl, o->client_ca, o->client_ca_len, names, errbuf,
                    errlen) < 0) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ssl, names);
        SSL_CTX_set_verify(ssl,
                           SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                           NULL);
    }
    if (role == TP_SERVER) {
        /* Needed for session resumption once client certificates are on. */
        static const unsigned char sid[] = "tlspump";
        SSL_CTX_set_session_id_context(ssl, sid, sizeof sid - 1);
    }

    if (o->alpn) {
        ctx->alpn_wire = alpn_wire(o->alpn, &ctx->alpn_len, errbuf, errlen);
        if (!ctx->alpn_wire)
            goto fail;
        if (role == TP_CLIENT)
            SSL_CTX_set_alpn_protos(ssl, ctx->alpn_wire, ctx->alpn_len);
        else
            SSL_CTX_set_alpn_select_cb(ssl, alpn_select, ctx);
    }
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    tp_ctx_free(ctx);
    return NULL;
}

tp_ctx *tp_ctx_ref(tp_ctx *ctx)
{
    if (ctx)
        __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_RELAXED);
    return ctx;
}

void tp_ctx_free(tp_ctx *ctx)
{
    if (!ctx || __atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    SSL_CTX_free(ctx->ssl);
    free(ctx->cert_pem);
    free(ctx->alpn_wire);
    free(ctx);
}
