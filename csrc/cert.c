/*
 * cert.c -- the ephemeral self-signed certificate a server gets when it is
 * given none, so `tlspump serve` runs out of the box; fingerprints and PEM.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

int tp__ephemeral_cert(X509 **cert, EVP_PKEY **key, char *errbuf,
                       size_t errlen)
{
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIGNUM *serial = BN_new();
    X509_NAME *name = NULL;
    if (!pkey || !x || !serial)
        goto fail;
    /* A random 127-bit serial: browsers and OpenSSL reject repeats. */
    if (!BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)))
        goto fail;
    if (!X509_set_version(x, 2) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), 365L * 24 * 3600))
        goto fail;
    name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                    (const unsigned char *)"tlspump", -1, -1,
                                    0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                    (const unsigned char *)"localhost", -1, -1,
                                    0) ||
        !X509_set_issuer_name(x, name) || !X509_set_pubkey(x, pkey))
        goto fail;
    /* No keyUsage: with one lacking keyCertSign OpenSSL would not treat the
     * certificate as self-issued when a client trusts it directly. */
    if (add_ext(x, NID_subject_alt_name,
                "DNS:localhost,IP:127.0.0.1,IP:::1") < 0 ||
        add_ext(x, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        add_ext(x, NID_subject_key_identifier, "hash") < 0)
        goto fail;
    if (!X509_sign(x, pkey, EVP_sha256()))
        goto fail;
    BN_free(serial);
    *cert = x;
    *key = pkey;
    return 0;
fail:
    tp__errbuf(errbuf, errlen, "cannot generate the ephemeral certificate: %s",
               ERR_reason_error_string(ERR_peek_last_error())
                   ? ERR_reason_error_string(ERR_peek_last_error())
                   : "unknown error");
    BN_free(serial);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return -1;
}

int tp__cert_fingerprint(X509 *x, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (!x || !X509_digest(x, EVP_sha256(), md, &n) || n != 32)
        return -1;
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

char *tp__cert_pem(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b && PEM_write_bio_X509(b, x)) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        out = malloc((size_t)n + 1);
        if (out) {
            memcpy(out, p, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(b);
    return out;
}
