/*
 * hush_jni.c - JNI glue between org.hush.sdk.HushClient and libhush (sdk/include/hush.h).
 *
 * Rules this file keeps (see docs/BINDINGS.md):
 * - Java never sees a pointer: HushClient keeps the address of a struct jhush in a private long,
 *   and guarantees (read/write lock) that no native call runs while nativeClose frees it.
 * - Natives are registered in JNI_OnLoad (signatures checked at load, not at first call), and
 *   classes and method ids are cached there: FindClass from the network thread would use the
 *   system class loader, which on Android cannot see app classes.
 * - The SDK's network thread is attached to the JVM once, as a daemon, on its first callback, and
 *   detached by a pthread key destructor when it exits. Every callback runs inside its own local
 *   frame (PushLocalFrame/PopLocalFrame): an attached native thread never returns to Java, so local
 *   references would otherwise pile up for the life of the thread.
 * - A Java exception left by a callback is printed and cleared before control returns to libhush.
 * - The listener bridge is a global reference only while the network runs; it is deleted after
 *   hush_net_stop returns, when no callback can come any more.
 * - Secrets crossing the boundary (the database key, message bodies) are copied into C memory that
 *   is wiped after use.
 */
#include <jni.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "hush.h"

#define BRIDGE_CLASS "org/hush/sdk/NativeBridge"
#define CLIENT_CLASS "org/hush/sdk/HushClient"
#define EXC_CLASS "org/hush/sdk/HushException"
#define HISTORY_CLASS "org/hush/sdk/HistoryEntry"
#define DEVICE_CLASS "org/hush/sdk/DeviceInfo"
#define GROUP_CLASS "org/hush/sdk/GroupInfo"
#define ATTACHMENT_CLASS "org/hush/sdk/Attachment"

#ifdef __ANDROID__
typedef JNIEnv *attach_env_t;
#else
typedef void *attach_env_t;
#endif

/* One per HushClient. */
struct jhush {
    hush_client *c;
    pthread_mutex_t mu; /* serialises start/stop and guards `bridge` */
    jobject bridge;     /* global ref while the network runs, else NULL */
};

static JavaVM *g_vm;
static pthread_key_t g_detach_key;
static jclass g_exc_cls, g_hist_cls, g_bridge_cls, g_string_cls, g_dev_cls, g_att_cls, g_group_cls;
static jmethodID g_exc_ctor, g_hist_ctor, g_dev_ctor, g_att_ctor, g_group_ctor, g_on_group_typing;
static jmethodID g_on_link_code, g_on_devices_changed, g_on_file;
static jmethodID g_on_message, g_on_receipt, g_on_typing, g_on_presence, g_on_identity, g_on_connection,
    g_on_error;

/* The client whose callback this thread is running, if any (stop/close from there would deadlock). */
static __thread struct jhush *tl_in_callback;

/* ------------------------------------------------------------------------------------------ */
/* Java strings from C strings. NewStringUTF takes Modified UTF-8 and CheckJNI aborts the app on
 * anything else, so a string is passed through only when it is plain ASCII (what libhush hands
 * out: usernames, group ids, safety numbers, relay texts it filtered); any other byte becomes '?'
 * here as a second line of defence. */
static jstring jstr(JNIEnv *env, const char *s)
{
    if (!s)
        return NULL;
    char buf[512];
    size_t n = 0;
    for (; *s && n + 1 < sizeof buf; s++)
        buf[n++] = ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f) ? *s : '?';
    buf[n] = '\0';
    return (*env)->NewStringUTF(env, buf);
}

/* errors */

static void throw_hush(JNIEnv *env, int code, const char *what)
{
    if ((*env)->ExceptionCheck(env))
        return;
    char msg[256];
    if (code > 0)
        snprintf(msg, sizeof msg, "%s: %s", what, hush_strerror((hush_err)code));
    else
        snprintf(msg, sizeof msg, "%s", what);
    jstring jmsg = jstr(env, msg);
    if (!jmsg)
        return; /* OutOfMemoryError pending */
    jobject ex = (*env)->NewObject(env, g_exc_cls, g_exc_ctor, (jint)code, jmsg);
    if (ex)
        (*env)->Throw(env, (jthrowable)ex);
    (*env)->DeleteLocalRef(env, jmsg);
}

/* Throws for a failed call; returns 1 if it threw. */
static int check(JNIEnv *env, hush_err e, const char *what)
{
    if (e == HUSH_OK)
        return 0;
    throw_hush(env, (int)e, what);
    return 1;
}

/*
 * Copies a Java string into buf as (modified) UTF-8. NULL or too long -> HushException
 * INVALID_ARG / TOO_BIG thrown, returns -1. No allocation: the length is checked first.
 */
static int get_str(JNIEnv *env, jstring s, char *buf, size_t cap, const char *what)
{
    if (!s) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, what);
        return -1;
    }
    jsize utf = (*env)->GetStringUTFLength(env, s);
    if (utf < 0 || (size_t)utf >= cap) {
        throw_hush(env, HUSH_ERR_TOO_BIG, what);
        return -1;
    }
    (*env)->GetStringUTFRegion(env, s, 0, (*env)->GetStringLength(env, s), buf);
    if ((*env)->ExceptionCheck(env))
        return -1;
    buf[utf] = '\0';
    return 0;
}

/* Like get_str, but a NULL Java string gives an empty C string (optional arguments). */
static int get_opt_str(JNIEnv *env, jstring s, char *buf, size_t cap, const char *what)
{
    if (!s) {
        buf[0] = '\0';
        return 0;
    }
    return get_str(env, s, buf, cap, what);
}

static jbyteArray new_bytes(JNIEnv *env, const uint8_t *p, size_t n)
{
    jbyteArray a = (*env)->NewByteArray(env, (jsize)n);
    if (a && n)
        (*env)->SetByteArrayRegion(env, a, 0, (jsize)n, (const jbyte *)p);
    return a;
}

static struct jhush *H(jlong h)
{
    return (struct jhush *)(intptr_t)h;
}

/* ------------------------------------------------------------------------------------------ */
/* callbacks from the network thread */

static void detach_thread(void *vm)
{
    (*(JavaVM *)vm)->DetachCurrentThread((JavaVM *)vm);
}

static JNIEnv *callback_env(void)
{
    JNIEnv *env = NULL;
    jint r = (*g_vm)->GetEnv(g_vm, (void **)&env, JNI_VERSION_1_6);
    if (r == JNI_OK)
        return env;
    if (r != JNI_EDETACHED)
        return NULL;
    JavaVMAttachArgs args = { JNI_VERSION_1_6, (char *)"hush-network", NULL };
    if ((*g_vm)->AttachCurrentThreadAsDaemon(g_vm, (attach_env_t *)&env, &args) != JNI_OK)
        return NULL;
    /* detached when the thread exits (hush_net_stop joins it) */
    pthread_setspecific(g_detach_key, g_vm);
    return env;
}

struct cb_scope {
    JNIEnv *env;
    struct jhush *saved;
};

static int cb_enter(struct jhush *h, struct cb_scope *s)
{
    s->env = callback_env();
    if (!s->env || !h->bridge)
        return -1;
    if ((*s->env)->PushLocalFrame(s->env, 16) < 0) {
        (*s->env)->ExceptionClear(s->env);
        return -1;
    }
    s->saved = tl_in_callback;
    tl_in_callback = h;
    return 0;
}

static void cb_leave(struct cb_scope *s)
{
    JNIEnv *env = s->env;
    if ((*env)->ExceptionCheck(env)) {
        /* the bridge already catches listener exceptions; this is the backstop (OOM...) */
        (*env)->ExceptionDescribe(env);
        (*env)->ExceptionClear(env);
    }
    tl_in_callback = s->saved;
    (*env)->PopLocalFrame(env, NULL);
}

static void cb_message(void *ctx, const hush_message *m)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    JNIEnv *env = s.env;
    jstring sender = jstr(env, m->sender);
    jstring group = sender ? jstr(env, m->group_id) : NULL;
    jbyteArray id = group ? new_bytes(env, m->message_id, HUSH_MESSAGE_ID_BYTES) : NULL;
    jbyteArray body = id ? new_bytes(env, m->body, m->body_len) : NULL;
    jstring conv = body ? jstr(env, m->conversation) : NULL;
    if (conv)
        (*env)->CallVoidMethod(env, h->bridge, g_on_message, (jint)m->kind, sender, (jint)m->sender_device, id,
                               (jlong)m->sent_at_ms, (jlong)m->received_at_ms, group, (jlong)m->local_id, body, conv);
    cb_leave(&s);
}

static void cb_link_code(void *ctx, const char *code)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    jstring jc = jstr(s.env, code);
    if (jc)
        (*s.env)->CallVoidMethod(s.env, h->bridge, g_on_link_code, jc);
    cb_leave(&s);
}

static void cb_devices_changed(void *ctx, const char *user)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    jstring ju = jstr(s.env, user);
    if (ju)
        (*s.env)->CallVoidMethod(s.env, h->bridge, g_on_devices_changed, ju);
    cb_leave(&s);
}

static void cb_file(void *ctx, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES], int state, uint64_t done, uint64_t total,
                    hush_err err)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    jbyteArray id = new_bytes(s.env, message_id, HUSH_MESSAGE_ID_BYTES);
    if (id)
        (*s.env)->CallVoidMethod(s.env, h->bridge, g_on_file, id, (jint)state, (jlong)done, (jlong)total, (jint)err);
    cb_leave(&s);
}

static void cb_receipt(void *ctx, const char *peer, const uint8_t message_id[HUSH_MESSAGE_ID_BYTES],
                       hush_msg_state state)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    JNIEnv *env = s.env;
    jstring jpeer = jstr(env, peer);
    jbyteArray id = jpeer ? new_bytes(env, message_id, HUSH_MESSAGE_ID_BYTES) : NULL;
    if (id)
        (*env)->CallVoidMethod(env, h->bridge, g_on_receipt, jpeer, id, (jint)state);
    cb_leave(&s);
}

static void cb_typing(void *ctx, const char *peer, uint32_t device_id, int typing)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    JNIEnv *env = s.env;
    jstring jpeer = jstr(env, peer);
    if (jpeer)
        (*env)->CallVoidMethod(env, h->bridge, g_on_typing, jpeer, (jint)device_id, (jboolean)(typing != 0));
    cb_leave(&s);
}

static void cb_group_typing(void *ctx, const char *group, const char *user, uint32_t device_id, int typing)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    JNIEnv *env = s.env;
    jstring jg = jstr(env, group);
    jstring ju = jg ? jstr(env, user) : NULL;
    if (ju)
        (*env)->CallVoidMethod(env, h->bridge, g_on_group_typing, jg, ju, (jint)device_id, (jboolean)(typing != 0));
    cb_leave(&s);
}

static void cb_presence(void *ctx, const char *user, int online, uint64_t last_seen_ms)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    JNIEnv *env = s.env;
    jstring juser = jstr(env, user);
    if (juser)
        (*env)->CallVoidMethod(env, h->bridge, g_on_presence, juser, (jboolean)(online != 0), (jlong)last_seen_ms);
    cb_leave(&s);
}

static void cb_identity(void *ctx, const char *peer, uint32_t device_id, const char *old_safety,
                        const char *new_safety)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    JNIEnv *env = s.env;
    jstring jpeer = jstr(env, peer);
    jstring jold = jpeer ? jstr(env, old_safety) : NULL;
    jstring jnew = jold ? jstr(env, new_safety) : NULL;
    if (jnew)
        (*env)->CallVoidMethod(env, h->bridge, g_on_identity, jpeer, (jint)device_id, jold, jnew);
    cb_leave(&s);
}

static void cb_connection(void *ctx, hush_conn_state state, hush_err last_error)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    (*s.env)->CallVoidMethod(s.env, h->bridge, g_on_connection, (jint)state, (jint)last_error);
    cb_leave(&s);
}

static void cb_error(void *ctx, hush_err err, const char *detail)
{
    struct jhush *h = ctx;
    struct cb_scope s;
    if (cb_enter(h, &s))
        return;
    JNIEnv *env = s.env;
    jstring jd = jstr(env, detail ? detail : "");
    if (jd)
        (*env)->CallVoidMethod(env, h->bridge, g_on_error, (jint)err, jd);
    cb_leave(&s);
}

/* ------------------------------------------------------------------------------------------ */
/* natives: lifecycle */

static jlong n_open(JNIEnv *env, jclass cls, jstring path, jbyteArray key, jint durability)
{
    (void)cls;
    char p[4096];
    if (get_str(env, path, p, sizeof p, "database path"))
        return 0;
    if (!key || (*env)->GetArrayLength(env, key) != HUSH_DB_KEY_BYTES) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "the database key must be 32 bytes");
        return 0;
    }
    uint8_t k[HUSH_DB_KEY_BYTES];
    (*env)->GetByteArrayRegion(env, key, 0, HUSH_DB_KEY_BYTES, (jbyte *)k);
    struct jhush *h = calloc(1, sizeof *h);
    if (!h) {
        sodium_memzero(k, sizeof k);
        throw_hush(env, HUSH_ERR_NOMEM, "open");
        return 0;
    }
    hush_open_opts o = { durability == 1 ? HUSH_DURABILITY_NORMAL : HUSH_DURABILITY_FULL };
    hush_err e = hush_client_open(p, k, &o, &h->c);
    sodium_memzero(k, sizeof k);
    if (check(env, e, "open")) {
        free(h);
        return 0;
    }
    pthread_mutex_init(&h->mu, NULL);
    return (jlong)(intptr_t)h;
}

static void stop_locked(JNIEnv *env, struct jhush *h)
{
    hush_net_stop(h->c); /* joins the network thread: no callback after this */
    if (h->bridge) {
        (*env)->DeleteGlobalRef(env, h->bridge);
        h->bridge = NULL;
    }
}

static void n_close(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    struct jhush *h = H(hh);
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    stop_locked(env, h);
    pthread_mutex_unlock(&h->mu);
    hush_client_close(h->c);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

static jboolean n_on_network_thread(JNIEnv *env, jclass cls, jlong hh)
{
    (void)env;
    (void)cls;
    return tl_in_callback == H(hh) ? JNI_TRUE : JNI_FALSE;
}

/* mode 0: hush_net_start; 1: hush_net_start_link; 2: hush_net_start_recover (user, code) */
static void n_start(JNIEnv *env, jclass cls, jlong hh, jstring url, jstring invite, jstring ca_file,
                    jboolean insecure, jobject bridge, jint mode, jstring ruser, jstring rcode)
{
    (void)cls;
    struct jhush *h = H(hh);
    char u[300], inv[129], ca[512], ru[64] = "", rc[160] = "";
    if (get_opt_str(env, url, u, sizeof u, "relay URL") || get_opt_str(env, invite, inv, sizeof inv, "invite") ||
        get_opt_str(env, ca_file, ca, sizeof ca, "CA file") || get_opt_str(env, ruser, ru, sizeof ru, "username") ||
        get_opt_str(env, rcode, rc, sizeof rc, "recovery code"))
        return;
    if (tl_in_callback == h) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "start: already running");
        return;
    }
    pthread_mutex_lock(&h->mu);
    if (h->bridge) {
        pthread_mutex_unlock(&h->mu);
        throw_hush(env, HUSH_ERR_INVALID_ARG, "start: already running");
        return;
    }
    h->bridge = (*env)->NewGlobalRef(env, bridge);
    if (!h->bridge) {
        pthread_mutex_unlock(&h->mu);
        throw_hush(env, HUSH_ERR_NOMEM, "start");
        return;
    }
    hush_net_opts o = { u[0] ? u : NULL, inv[0] ? inv : NULL, ca[0] ? ca : NULL, insecure ? 1 : 0 };
    hush_callbacks cb = { h,        cb_message, cb_receipt, cb_typing,    cb_presence,       cb_identity,
                          cb_connection, cb_error, cb_link_code, cb_devices_changed, cb_file, cb_group_typing };
    hush_err e = mode == 1   ? hush_net_start_link(h->c, &o, &cb)
                 : mode == 2 ? hush_net_start_recover(h->c, &o, &cb, ru, rc)
                             : hush_net_start(h->c, &o, &cb);
    sodium_memzero(rc, sizeof rc);
    if (e) {
        (*env)->DeleteGlobalRef(env, h->bridge);
        h->bridge = NULL;
    }
    pthread_mutex_unlock(&h->mu);
    check(env, e, "start");
}

static void n_stop(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    struct jhush *h = H(hh);
    pthread_mutex_lock(&h->mu);
    stop_locked(env, h);
    pthread_mutex_unlock(&h->mu);
}

static jlong n_state(JNIEnv *env, jclass cls, jlong hh)
{
    (void)env;
    (void)cls;
    hush_err le = HUSH_OK;
    hush_conn_state s = hush_net_state(H(hh)->c, &le);
    return ((jlong)s << 32) | (jlong)(uint32_t)le;
}

static void n_wait_online(JNIEnv *env, jclass cls, jlong hh, jint ms)
{
    (void)cls;
    check(env, hush_net_wait_online(H(hh)->c, ms), "waitOnline");
}

static void n_flush(JNIEnv *env, jclass cls, jlong hh, jint ms)
{
    (void)cls;
    check(env, hush_net_flush(H(hh)->c, ms), "flush");
}

static jboolean n_running(JNIEnv *env, jclass cls, jlong hh)
{
    (void)env;
    (void)cls;
    struct jhush *h = H(hh);
    pthread_mutex_lock(&h->mu);
    jboolean r = h->bridge != NULL;
    pthread_mutex_unlock(&h->mu);
    return r;
}

static void n_wait_drained(JNIEnv *env, jclass cls, jlong hh, jint ms)
{
    (void)cls;
    check(env, hush_net_wait_drained(H(hh)->c, ms), "wait for the mailbox to drain");
}

/* ------------------------------------------------------------------------------------------ */
/* natives: push */

/* A byte array of exactly n bytes into out (INVALID_ARG otherwise). */
static int get_fixed_bytes(JNIEnv *env, jbyteArray a, uint8_t *out, jsize n, const char *what)
{
    if (!a || (*env)->GetArrayLength(env, a) != n) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, what);
        return -1;
    }
    (*env)->GetByteArrayRegion(env, a, 0, n, (jbyte *)out);
    return 0;
}

static void n_push_register(JNIEnv *env, jclass cls, jlong hh, jstring endpoint, jbyteArray p256dh, jbyteArray auth)
{
    (void)cls;
    char url[1001];
    uint8_t pk[65], au[16];
    if (get_str(env, endpoint, url, sizeof url, "push endpoint (at most 1000 bytes)") ||
        get_fixed_bytes(env, p256dh, pk, sizeof pk, "p256dh must be 65 bytes") ||
        get_fixed_bytes(env, auth, au, sizeof au, "auth must be 16 bytes"))
        return;
    hush_err e = hush_push_register(H(hh)->c, url, pk, sizeof pk, au, sizeof au);
    sodium_memzero(au, sizeof au);
    check(env, e, "push register");
}

static void n_push_unregister(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    check(env, hush_push_unregister(H(hh)->c), "push unregister");
}

static jstring n_push_vapid_key(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    char k[HUSH_PUSH_VAPID_KEY_LEN + 1];
    hush_err e = hush_push_vapid_key(H(hh)->c, k, sizeof k);
    if (e == HUSH_ERR_NOT_FOUND)
        return NULL;
    if (check(env, e, "push VAPID key"))
        return NULL;
    return jstr(env, k);
}

/* ------------------------------------------------------------------------------------------ */
/* natives: files */

static int get_message_id(JNIEnv *env, jbyteArray id, uint8_t out[HUSH_MESSAGE_ID_BYTES]);

/* to_group: peer is a room's id (hush_group_send_file) */
static jbyteArray n_send_file(JNIEnv *env, jclass cls, jlong hh, jstring peer, jstring path, jstring name, jstring type,
                              jbyteArray thumb, jboolean to_group)
{
    (void)cls;
    char p[64], fp[4096], fn[HUSH_MAX_FILE_NAME * 4 + 1], ct[HUSH_MAX_CONTENT_TYPE * 4 + 1];
    if (get_str(env, peer, p, sizeof p, "peer") || get_str(env, path, fp, sizeof fp, "path") ||
        (name && get_str(env, name, fn, sizeof fn, "file name")) || (type && get_str(env, type, ct, sizeof ct, "content type")))
        return NULL;
    jsize tn = thumb ? (*env)->GetArrayLength(env, thumb) : 0;
    if (tn > HUSH_MAX_THUMBNAIL) { /* checked before allocating */
        throw_hush(env, HUSH_ERR_TOO_BIG, "thumbnail");
        return NULL;
    }
    uint8_t *tb = tn ? malloc((size_t)tn) : NULL;
    if (tn && !tb) {
        throw_hush(env, HUSH_ERR_NOMEM, "sendFile");
        return NULL;
    }
    if (tn)
        (*env)->GetByteArrayRegion(env, thumb, 0, tn, (jbyte *)tb);
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    hush_err e = to_group ? hush_group_send_file(H(hh)->c, p, fp, name ? fn : NULL, type ? ct : NULL, tb, (size_t)tn, mid)
                          : hush_send_file(H(hh)->c, p, fp, name ? fn : NULL, type ? ct : NULL, tb, (size_t)tn, mid);
    free(tb);
    if (check(env, e, "sendFile"))
        return NULL;
    return new_bytes(env, mid, sizeof mid);
}

static jobject n_attachment(JNIEnv *env, jclass cls, jlong hh, jbyteArray id)
{
    (void)cls;
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    if (get_message_id(env, id, mid))
        return NULL;
    hush_attachment *a = NULL;
    if (check(env, hush_attachment_get(H(hh)->c, mid, &a), "attachment"))
        return NULL;
    jstring peer = jstr(env, a->peer);
    jstring name = peer ? jstr(env, a->file_name) : NULL;
    jstring type = name ? jstr(env, a->content_type) : NULL;
    jbyteArray thumb = type && a->thumbnail ? new_bytes(env, a->thumbnail, a->thumbnail_len) : NULL;
    jobject o = type && (thumb || !a->thumbnail)
                    ? (*env)->NewObject(env, g_att_cls, g_att_ctor, id, (jboolean)(a->outgoing != 0), peer, name, type,
                                        (jlong)a->size, (jint)a->state, (jlong)a->done, (jlong)a->total, thumb)
                    : NULL;
    hush_attachment_free(a);
    return o;
}

static void n_attachment_op(JNIEnv *env, jclass cls, jlong hh, jbyteArray id, jint op, jstring out)
{
    (void)cls;
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    char path[4096];
    if (get_message_id(env, id, mid) || (op == 1 && get_str(env, out, path, sizeof path, "path")))
        return;
    if (op == 0)
        check(env, hush_attachment_download(H(hh)->c, mid), "downloadAttachment");
    else if (op == 1)
        check(env, hush_attachment_save(H(hh)->c, mid, path), "saveAttachment");
    else
        check(env, hush_attachment_cancel(H(hh)->c, mid), "cancelAttachment");
}

/* ------------------------------------------------------------------------------------------ */
/* natives: device */

static jint n_link_device(JNIEnv *env, jclass cls, jlong hh, jstring code, jint ms)
{
    (void)cls;
    char c[HUSH_LINK_CODE_MAX + 1];
    if (get_str(env, code, c, sizeof c, "link code"))
        return 0;
    uint32_t dev = 0;
    if (check(env, hush_device_link(H(hh)->c, c, ms, &dev), "linkDevice"))
        return 0;
    return (jint)dev;
}

static void n_remove_device(JNIEnv *env, jclass cls, jlong hh, jint dev, jint ms)
{
    (void)cls;
    if (dev <= 0) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "removeDevice: the device id must be positive");
        return;
    }
    check(env, hush_device_remove(H(hh)->c, (uint32_t)dev, ms), "removeDevice");
}

static jstring n_recovery_code(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    char code[HUSH_RECOVERY_CODE_LEN + 1];
    hush_err e = hush_recovery_code(H(hh)->c, code);
    if (e == HUSH_ERR_NOT_FOUND)
        return NULL;
    if (check(env, e, "recoveryCode"))
        return NULL;
    jstring r = jstr(env, code);
    sodium_memzero(code, sizeof code);
    return r;
}

static void n_forget_recovery_code(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    check(env, hush_recovery_code_forget(H(hh)->c), "forgetRecoveryCode");
}

static jboolean n_has_device(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    hush_err e = hush_device_info(H(hh)->c, NULL, NULL, NULL);
    if (e == HUSH_ERR_NO_DEVICE)
        return JNI_FALSE;
    if (check(env, e, "hasDevice"))
        return JNI_FALSE;
    return JNI_TRUE;
}

static void n_create_device(JNIEnv *env, jclass cls, jlong hh, jstring user, jint device_id)
{
    (void)cls;
    char u[64];
    if (get_str(env, user, u, sizeof u, "username"))
        return;
    if (device_id <= 0) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "createDevice: the device id must be positive");
        return;
    }
    check(env, hush_device_create(H(hh)->c, u, (uint32_t)device_id), "createDevice");
}

static jstring n_username(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    char u[HUSH_USERNAME_MAX + 1];
    if (check(env, hush_device_info(H(hh)->c, u, NULL, NULL), "username"))
        return NULL;
    return jstr(env, u);
}

static jint n_device_id(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    uint32_t d = 0;
    if (check(env, hush_device_info(H(hh)->c, NULL, &d, NULL), "deviceId"))
        return 0;
    return (jint)d;
}

/* ------------------------------------------------------------------------------------------ */
/* natives: messaging */

static jbyteArray n_send(JNIEnv *env, jclass cls, jlong hh, jstring peer, jbyteArray text)
{
    (void)cls;
    char p[64];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return NULL;
    if (!text) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "send: no text");
        return NULL;
    }
    jsize n = (*env)->GetArrayLength(env, text);
    if (n > HUSH_MAX_BODY) { /* checked before allocating */
        throw_hush(env, HUSH_ERR_TOO_BIG, "send");
        return NULL;
    }
    uint8_t *buf = malloc(n ? (size_t)n : 1);
    if (!buf) {
        throw_hush(env, HUSH_ERR_NOMEM, "send");
        return NULL;
    }
    (*env)->GetByteArrayRegion(env, text, 0, n, (jbyte *)buf);
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    hush_err e = hush_send(H(hh)->c, p, buf, (size_t)n, mid);
    sodium_memzero(buf, (size_t)n);
    free(buf);
    if (check(env, e, "send"))
        return NULL;
    return new_bytes(env, mid, sizeof mid);
}

static int get_message_id(JNIEnv *env, jbyteArray id, uint8_t out[HUSH_MESSAGE_ID_BYTES])
{
    if (!id || (*env)->GetArrayLength(env, id) != HUSH_MESSAGE_ID_BYTES) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "message id");
        return -1;
    }
    (*env)->GetByteArrayRegion(env, id, 0, HUSH_MESSAGE_ID_BYTES, (jbyte *)out);
    return 0;
}

static jint n_message_state(JNIEnv *env, jclass cls, jlong hh, jbyteArray id)
{
    (void)cls;
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    if (get_message_id(env, id, mid))
        return 0;
    hush_msg_state s = HUSH_MSG_QUEUED;
    if (check(env, hush_message_state(H(hh)->c, mid, &s), "messageState"))
        return 0;
    return (jint)s;
}

static void n_mark_read(JNIEnv *env, jclass cls, jlong hh, jlong local_id)
{
    (void)cls;
    check(env, hush_mark_read(H(hh)->c, (int64_t)local_id), "markRead");
}

static void n_typing(JNIEnv *env, jclass cls, jlong hh, jstring peer, jboolean typing)
{
    (void)cls;
    char p[64];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return;
    check(env, hush_typing(H(hh)->c, p, typing ? 1 : 0), "typing");
}

static jint n_outbox_count(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    uint32_t n = 0;
    if (check(env, hush_outbox_count(H(hh)->c, &n), "pendingCount"))
        return 0;
    return (jint)n;
}

#define MAX_PRESENCE_NAMES 1000

static void presence_list(JNIEnv *env, jlong hh, jobjectArray users, int subscribe)
{
    const char *what = subscribe ? "presenceSubscribe" : "presenceAllow";
    if (!users) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, what);
        return;
    }
    jsize n = (*env)->GetArrayLength(env, users);
    if (n > MAX_PRESENCE_NAMES) {
        throw_hush(env, HUSH_ERR_TOO_BIG, what);
        return;
    }
    char(*names)[64] = calloc(n ? (size_t)n : 1, sizeof *names);
    const char **ptrs = calloc(n ? (size_t)n : 1, sizeof *ptrs);
    if (!names || !ptrs) {
        free(names);
        free(ptrs);
        throw_hush(env, HUSH_ERR_NOMEM, what);
        return;
    }
    int bad = 0;
    for (jsize i = 0; i < n && !bad; i++) {
        jstring s = (jstring)(*env)->GetObjectArrayElement(env, users, i);
        bad = get_str(env, s, names[i], sizeof names[i], what) != 0;
        if (s)
            (*env)->DeleteLocalRef(env, s);
        ptrs[i] = names[i];
    }
    if (!bad) {
        hush_err e = subscribe ? hush_presence_subscribe(H(hh)->c, ptrs, (size_t)n)
                               : hush_presence_allow(H(hh)->c, ptrs, (size_t)n);
        check(env, e, what);
    }
    free(names);
    free(ptrs);
}

static void n_presence_allow(JNIEnv *env, jclass cls, jlong hh, jobjectArray users)
{
    (void)cls;
    presence_list(env, hh, users, 0);
}

static void n_presence_subscribe(JNIEnv *env, jclass cls, jlong hh, jobjectArray users)
{
    (void)cls;
    presence_list(env, hh, users, 1);
}

/* ------------------------------------------------------------------------------------------ */
/* natives: safety numbers and identity changes */

static jstring n_safety_number(JNIEnv *env, jclass cls, jlong hh, jstring peer, jint dev)
{
    (void)cls;
    char p[64], sn[HUSH_SAFETY_NUMBER_LEN + 1];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return NULL;
    if (check(env, hush_safety_number(H(hh)->c, p, (uint32_t)dev, sn), "safetyNumber"))
        return NULL;
    return jstr(env, sn);
}

static jbyteArray n_safety_scannable(JNIEnv *env, jclass cls, jlong hh, jstring peer, jint dev)
{
    (void)cls;
    char p[64];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return NULL;
    uint8_t *out = NULL;
    size_t len = 0;
    if (check(env, hush_safety_scannable(H(hh)->c, p, (uint32_t)dev, &out, &len), "safetyScannable"))
        return NULL;
    jbyteArray a = new_bytes(env, out, len);
    hush_free(out);
    return a;
}

static jboolean n_safety_compare(JNIEnv *env, jclass cls, jlong hh, jstring peer, jint dev, jbyteArray scanned)
{
    (void)cls;
    char p[64];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return JNI_FALSE;
    if (!scanned) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "safetyCompare: nothing scanned");
        return JNI_FALSE;
    }
    jsize n = (*env)->GetArrayLength(env, scanned);
    if (n > 4096) { /* a scannable code is ~100 bytes */
        return JNI_FALSE;
    }
    uint8_t buf[4096];
    (*env)->GetByteArrayRegion(env, scanned, 0, n, (jbyte *)buf);
    hush_err e = hush_safety_compare(H(hh)->c, p, (uint32_t)dev, buf, (size_t)n);
    if (e == HUSH_ERR_SAFETY_MISMATCH || e == HUSH_ERR_BAD_MESSAGE)
        return JNI_FALSE;
    if (check(env, e, "safetyCompare"))
        return JNI_FALSE;
    return JNI_TRUE;
}

static jobjectArray n_identity_pending(JNIEnv *env, jclass cls, jlong hh, jstring peer, jint dev)
{
    (void)cls;
    char p[64], old_sn[HUSH_SAFETY_NUMBER_LEN + 1], new_sn[HUSH_SAFETY_NUMBER_LEN + 1];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return NULL;
    hush_err e = hush_identity_pending(H(hh)->c, p, (uint32_t)dev, old_sn, new_sn);
    if (e == HUSH_ERR_NOT_FOUND)
        return NULL; /* nothing pending */
    if (check(env, e, "identityPending"))
        return NULL;
    jobjectArray a = (*env)->NewObjectArray(env, 2, g_string_cls, NULL);
    jstring o = a ? jstr(env, old_sn) : NULL;
    jstring w = o ? jstr(env, new_sn) : NULL;
    if (!w)
        return NULL;
    (*env)->SetObjectArrayElement(env, a, 0, o);
    (*env)->SetObjectArrayElement(env, a, 1, w);
    return a;
}

static void n_identity_decide(JNIEnv *env, jclass cls, jlong hh, jstring peer, jint dev, jboolean accept)
{
    (void)cls;
    char p[64];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return;
    if (accept)
        check(env, hush_identity_accept(H(hh)->c, p, (uint32_t)dev), "acceptIdentity");
    else
        check(env, hush_identity_reject(H(hh)->c, p, (uint32_t)dev), "rejectIdentity");
}

static void n_identity_accept_number(JNIEnv *env, jclass cls, jlong hh, jstring peer, jint dev, jstring number)
{
    (void)cls;
    char p[64], num[128];
    if (get_str(env, peer, p, sizeof p, "peer") || get_str(env, number, num, sizeof num, "safetyNumber"))
        return;
    check(env, hush_identity_accept_number(H(hh)->c, p, (uint32_t)dev, num), "acceptIdentity");
}

static jintArray n_peer_devices(JNIEnv *env, jclass cls, jlong hh, jstring peer)
{
    (void)cls;
    char p[64];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return NULL;
    uint32_t devs[64];
    size_t n = 0;
    if (check(env, hush_peer_devices(H(hh)->c, p, devs, 64, &n), "peerDevices"))
        return NULL;
    jintArray a = (*env)->NewIntArray(env, (jsize)n);
    if (a && n) {
        jint tmp[64];
        for (size_t i = 0; i < n; i++)
            tmp[i] = (jint)devs[i];
        (*env)->SetIntArrayRegion(env, a, 0, (jsize)n, tmp);
    }
    return a;
}

/* ------------------------------------------------------------------------------------------ */
/* natives: history */

/* A page of history as HistoryEntry[] (the entries freed here). */
static jobjectArray history_array(JNIEnv *env, hush_history_entry *es, size_t n)
{
    jobjectArray a = (*env)->NewObjectArray(env, (jsize)n, g_hist_cls, NULL);
    for (size_t i = 0; a && i < n; i++) {
        const hush_history_entry *e = &es[i];
        jstring jp = jstr(env, e->peer);
        jbyteArray id = jp ? new_bytes(env, e->message_id, HUSH_MESSAGE_ID_BYTES) : NULL;
        jbyteArray body = id ? new_bytes(env, e->body, e->body_len) : NULL;
        jobject o = body ? (*env)->NewObject(env, g_hist_cls, g_hist_ctor, (jlong)e->local_id,
                                              (jboolean)(e->outgoing != 0), jp, (jint)e->peer_device, id,
                                              (jlong)e->sent_at_ms, (jlong)e->received_at_ms,
                                              (jboolean)(e->read != 0), body, (jboolean)(e->kind == HUSH_KIND_FILE),
                                              (jboolean)(e->kind == HUSH_KIND_GROUP_CHANGE))
                         : NULL;
        if (o)
            (*env)->SetObjectArrayElement(env, a, (jsize)i, o);
        /* up to 500 rows: free each row's references as we go (only 16 are guaranteed) */
        if (jp)
            (*env)->DeleteLocalRef(env, jp);
        if (id)
            (*env)->DeleteLocalRef(env, id);
        if (body)
            (*env)->DeleteLocalRef(env, body);
        if (o)
            (*env)->DeleteLocalRef(env, o);
        if ((*env)->ExceptionCheck(env))
            break;
    }
    hush_history_free(es, n);
    return (*env)->ExceptionCheck(env) ? NULL : a;
}

static jobjectArray n_history(JNIEnv *env, jclass cls, jlong hh, jstring peer, jlong before, jint limit)
{
    (void)cls;
    char p[64];
    if (get_str(env, peer, p, sizeof p, "peer"))
        return NULL;
    hush_history_entry *es = NULL;
    size_t n = 0;
    if (check(env, hush_history_list(H(hh)->c, p, (int64_t)before, (int)limit, &es, &n), "history"))
        return NULL;
    return history_array(env, es, n);
}

/* ------------------------------------------------------------------------------------------ */
/* natives: rooms */

static jobjectArray n_group_history(JNIEnv *env, jclass cls, jlong hh, jstring group, jlong before, jint limit)
{
    (void)cls;
    char g[HUSH_ROOM_ID_LEN + 8];
    if (get_str(env, group, g, sizeof g, "group"))
        return NULL;
    hush_history_entry *es = NULL;
    size_t n = 0;
    if (check(env, hush_group_history(H(hh)->c, g, (int64_t)before, (int)limit, &es, &n), "groupHistory"))
        return NULL;
    return history_array(env, es, n);
}

/* op: 0 create (name, users), 1 add (users), 2 remove, 3 promote (users[0]), 4 rename (name), 5 leave.
 * Returns the room's id for create, else NULL. */
static jstring n_group_change(JNIEnv *env, jclass cls, jlong hh, jint op, jstring group, jbyteArray name,
                              jobjectArray users)
{
    (void)cls;
    static const char *const what[] = { "createGroup", "addToGroup", "removeFromGroup", "promoteInGroup",
                                        "renameGroup", "leaveGroup" };
    if (op < 0 || op > 5 || !users) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "group");
        return NULL;
    }
    char g[HUSH_ROOM_ID_LEN + 8] = "", nm[HUSH_ROOM_NAME_MAX + 1] = "";
    if (op != 0 && get_str(env, group, g, sizeof g, what[op]))
        return NULL;
    if (op == 0 || op == 4) {
        jsize len = name ? (*env)->GetArrayLength(env, name) : -1;
        if (len < 1 || len > HUSH_ROOM_NAME_MAX) {
            throw_hush(env, len > HUSH_ROOM_NAME_MAX ? HUSH_ERR_TOO_BIG : HUSH_ERR_INVALID_ARG, what[op]);
            return NULL;
        }
        (*env)->GetByteArrayRegion(env, name, 0, len, (jbyte *)nm);
        nm[len] = '\0';
        if (strlen(nm) != (size_t)len) { /* a NUL inside */
            throw_hush(env, HUSH_ERR_INVALID_ARG, what[op]);
            return NULL;
        }
    }
    jsize n = (*env)->GetArrayLength(env, users);
    if (n > HUSH_ROOM_MAX_MEMBERS) {
        throw_hush(env, HUSH_ERR_TOO_BIG, what[op]);
        return NULL;
    }
    char(*names)[64] = calloc(n ? (size_t)n : 1, sizeof *names);
    const char **ptrs = calloc(n ? (size_t)n : 1, sizeof *ptrs);
    jstring out = NULL;
    int bad = !names || !ptrs;
    if (bad)
        throw_hush(env, HUSH_ERR_NOMEM, what[op]);
    for (jsize i = 0; i < n && !bad; i++) {
        jstring s = (jstring)(*env)->GetObjectArrayElement(env, users, i);
        bad = get_str(env, s, names[i], sizeof names[i], what[op]) != 0;
        if (s)
            (*env)->DeleteLocalRef(env, s);
        ptrs[i] = names[i];
    }
    if (!bad && (op == 2 || op == 3) && n != 1) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, what[op]);
        bad = 1;
    }
    if (!bad) {
        hush_client *c = H(hh)->c;
        char id[HUSH_ROOM_ID_LEN + 1];
        hush_err e = op == 0   ? hush_group_create(c, nm, ptrs, (size_t)n, id)
                     : op == 1 ? hush_group_add(c, g, ptrs, (size_t)n)
                     : op == 2 ? hush_group_remove(c, g, ptrs[0])
                     : op == 3 ? hush_group_promote(c, g, ptrs[0])
                     : op == 4 ? hush_group_rename(c, g, nm)
                               : hush_group_leave(c, g);
        if (!check(env, e, what[op]) && op == 0)
            out = jstr(env, id);
    }
    free(names);
    free(ptrs);
    return out;
}

static jbyteArray n_group_send(JNIEnv *env, jclass cls, jlong hh, jstring group, jbyteArray text)
{
    (void)cls;
    char g[HUSH_ROOM_ID_LEN + 8];
    if (get_str(env, group, g, sizeof g, "sendToGroup"))
        return NULL;
    if (!text) {
        throw_hush(env, HUSH_ERR_INVALID_ARG, "sendToGroup: no text");
        return NULL;
    }
    jsize n = (*env)->GetArrayLength(env, text);
    if (n > HUSH_MAX_BODY) { /* checked before allocating */
        throw_hush(env, HUSH_ERR_TOO_BIG, "sendToGroup");
        return NULL;
    }
    uint8_t *buf = malloc(n ? (size_t)n : 1);
    if (!buf) {
        throw_hush(env, HUSH_ERR_NOMEM, "sendToGroup");
        return NULL;
    }
    (*env)->GetByteArrayRegion(env, text, 0, n, (jbyte *)buf);
    uint8_t mid[HUSH_MESSAGE_ID_BYTES];
    hush_err e = hush_group_send(H(hh)->c, g, buf, (size_t)n, mid);
    sodium_memzero(buf, (size_t)n);
    free(buf);
    if (check(env, e, "sendToGroup"))
        return NULL;
    return new_bytes(env, mid, sizeof mid);
}

static void n_group_typing(JNIEnv *env, jclass cls, jlong hh, jstring group, jboolean typing)
{
    (void)cls;
    char g[HUSH_ROOM_ID_LEN + 8];
    if (get_str(env, group, g, sizeof g, "groupTyping"))
        return;
    check(env, hush_group_typing(H(hh)->c, g, typing ? 1 : 0), "groupTyping");
}

static void n_group_share_presence(JNIEnv *env, jclass cls, jlong hh, jstring group, jboolean share)
{
    (void)cls;
    char g[HUSH_ROOM_ID_LEN + 8];
    if (get_str(env, group, g, sizeof g, "shareGroupPresence"))
        return;
    check(env, hush_group_share_presence(H(hh)->c, g, share ? 1 : 0), "shareGroupPresence");
}

/* One GroupInfo (NULL with an exception pending on failure). The name goes as bytes: it is UTF-8,
 * which NewStringUTF does not take. */
static jobject group_object(JNIEnv *env, const hush_group_state *g)
{
    jstring id = jstr(env, g->id);
    jbyteArray name = id ? new_bytes(env, (const uint8_t *)g->name, strlen(g->name)) : NULL;
    jobjectArray members = name ? (*env)->NewObjectArray(env, (jsize)g->n_members, g_string_cls, NULL) : NULL;
    jbooleanArray admins = members ? (*env)->NewBooleanArray(env, (jsize)g->n_members) : NULL;
    for (size_t i = 0; admins && i < g->n_members; i++) {
        jstring m = jstr(env, g->members[i]);
        if (!m)
            return NULL;
        (*env)->SetObjectArrayElement(env, members, (jsize)i, m);
        (*env)->DeleteLocalRef(env, m);
        jboolean b = g->admin[i] ? JNI_TRUE : JNI_FALSE;
        (*env)->SetBooleanArrayRegion(env, admins, (jsize)i, 1, &b);
    }
    jobject o = admins ? (*env)->NewObject(env, g_group_cls, g_group_ctor, id, name, (jlong)g->version,
                                           (jboolean)(g->is_member != 0), (jboolean)(g->is_admin != 0), members,
                                           admins, (jlong)g->changed_at_ms, (jboolean)(g->shares_presence != 0))
                       : NULL;
    if (id)
        (*env)->DeleteLocalRef(env, id);
    if (name)
        (*env)->DeleteLocalRef(env, name);
    if (members)
        (*env)->DeleteLocalRef(env, members);
    if (admins)
        (*env)->DeleteLocalRef(env, admins);
    return o;
}

static jobject n_group_info(JNIEnv *env, jclass cls, jlong hh, jstring group)
{
    (void)cls;
    char g[HUSH_ROOM_ID_LEN + 8];
    if (get_str(env, group, g, sizeof g, "groupInfo"))
        return NULL;
    hush_group_state *st = NULL;
    if (check(env, hush_group_info(H(hh)->c, g, &st), "groupInfo"))
        return NULL;
    jobject o = group_object(env, st);
    hush_group_state_free(st, 1);
    return o;
}

static jobjectArray n_groups(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    hush_group_state *st = NULL;
    size_t n = 0;
    if (check(env, hush_group_list(H(hh)->c, &st, &n), "groups"))
        return NULL;
    jobjectArray a = (*env)->NewObjectArray(env, (jsize)n, g_group_cls, NULL);
    for (size_t i = 0; a && i < n; i++) {
        jobject o = group_object(env, &st[i]);
        if (!o)
            break;
        (*env)->SetObjectArrayElement(env, a, (jsize)i, o);
        (*env)->DeleteLocalRef(env, o);
    }
    hush_group_state_free(st, n);
    return (*env)->ExceptionCheck(env) ? NULL : a;
}

static jobjectArray n_devices(JNIEnv *env, jclass cls, jlong hh, jint ms)
{
    (void)cls;
    hush_device_entry *es = NULL;
    size_t n = 0;
    if (check(env, hush_devices(H(hh)->c, ms, &es, &n), "devices"))
        return NULL;
    jobjectArray a = (*env)->NewObjectArray(env, (jsize)n, g_dev_cls, NULL);
    for (size_t i = 0; a && i < n; i++) {
        jstring name = jstr(env, es[i].name);
        jobject o = name ? (*env)->NewObject(env, g_dev_cls, g_dev_ctor, (jint)es[i].device_id, name,
                                             (jlong)es[i].created_ms, (jlong)es[i].last_seen_ms,
                                             (jboolean)(es[i].online != 0), (jboolean)(es[i].this_device != 0))
                         : NULL;
        if (o)
            (*env)->SetObjectArrayElement(env, a, (jsize)i, o);
        if (name)
            (*env)->DeleteLocalRef(env, name);
        if (o)
            (*env)->DeleteLocalRef(env, o);
        if ((*env)->ExceptionCheck(env))
            break;
    }
    hush_devices_free(es);
    return (*env)->ExceptionCheck(env) ? NULL : a;
}

static void n_set_device_name(JNIEnv *env, jclass cls, jlong hh, jstring name)
{
    (void)cls;
    char nm[HUSH_DEVICE_NAME_MAX + 1];
    if (get_str(env, name, nm, sizeof nm, "device name"))
        return;
    check(env, hush_device_name_set(H(hh)->c, nm), "setDeviceName");
}

static void n_history_delete(JNIEnv *env, jclass cls, jlong hh, jlong local_id)
{
    (void)cls;
    check(env, hush_history_delete(H(hh)->c, (int64_t)local_id), "deleteMessage");
}

static void n_check(JNIEnv *env, jclass cls, jlong hh)
{
    (void)cls;
    check(env, hush_client_check(H(hh)->c), "checkIntegrity");
}

static jstring n_version(JNIEnv *env, jclass cls)
{
    (void)cls;
    return jstr(env, hush_version());
}

static jstring n_strerror(JNIEnv *env, jclass cls, jint code)
{
    (void)cls;
    return jstr(env, hush_strerror((hush_err)code));
}

/* ------------------------------------------------------------------------------------------ */

#define S "Ljava/lang/String;"
static const JNINativeMethod g_natives[] = {
    { "nativeOpen", "(" S "[BI)J", (void *)n_open },
    { "nativeClose", "(J)V", (void *)n_close },
    { "nativeOnNetworkThread", "(J)Z", (void *)n_on_network_thread },
    { "nativeStart", "(J" S S S "ZLorg/hush/sdk/NativeBridge;I" S S ")V", (void *)n_start },
    { "nativeLinkDevice", "(J" S "I)I", (void *)n_link_device },
    { "nativeRemoveDevice", "(JII)V", (void *)n_remove_device },
    { "nativeRecoveryCode", "(J)" S, (void *)n_recovery_code },
    { "nativeDevices", "(JI)[Lorg/hush/sdk/DeviceInfo;", (void *)n_devices },
    { "nativeSetDeviceName", "(J" S ")V", (void *)n_set_device_name },
    { "nativeForgetRecoveryCode", "(J)V", (void *)n_forget_recovery_code },
    { "nativeStop", "(J)V", (void *)n_stop },
    { "nativeState", "(J)J", (void *)n_state },
    { "nativeWaitOnline", "(JI)V", (void *)n_wait_online },
    { "nativeFlush", "(JI)V", (void *)n_flush },
    { "nativeRunning", "(J)Z", (void *)n_running },
    { "nativeWaitDrained", "(JI)V", (void *)n_wait_drained },
    { "nativeSendFile", "(J" S S S S "[BZ)[B", (void *)n_send_file },
    { "nativeAttachment", "(J[B)Lorg/hush/sdk/Attachment;", (void *)n_attachment },
    { "nativeAttachmentOp", "(J[BI" S ")V", (void *)n_attachment_op },
    { "nativePushRegister", "(J" S "[B[B)V", (void *)n_push_register },
    { "nativePushUnregister", "(J)V", (void *)n_push_unregister },
    { "nativePushVapidKey", "(J)" S, (void *)n_push_vapid_key },
    { "nativeHasDevice", "(J)Z", (void *)n_has_device },
    { "nativeCreateDevice", "(J" S "I)V", (void *)n_create_device },
    { "nativeUsername", "(J)" S, (void *)n_username },
    { "nativeDeviceId", "(J)I", (void *)n_device_id },
    { "nativeSend", "(J" S "[B)[B", (void *)n_send },
    { "nativeMessageState", "(J[B)I", (void *)n_message_state },
    { "nativeMarkRead", "(JJ)V", (void *)n_mark_read },
    { "nativeTyping", "(J" S "Z)V", (void *)n_typing },
    { "nativeOutboxCount", "(J)I", (void *)n_outbox_count },
    { "nativePresenceAllow", "(J[" S ")V", (void *)n_presence_allow },
    { "nativePresenceSubscribe", "(J[" S ")V", (void *)n_presence_subscribe },
    { "nativeSafetyNumber", "(J" S "I)" S, (void *)n_safety_number },
    { "nativeSafetyScannable", "(J" S "I)[B", (void *)n_safety_scannable },
    { "nativeSafetyCompare", "(J" S "I[B)Z", (void *)n_safety_compare },
    { "nativeIdentityPending", "(J" S "I)[" S, (void *)n_identity_pending },
    { "nativeIdentityDecide", "(J" S "IZ)V", (void *)n_identity_decide },
    { "nativeIdentityAcceptNumber", "(J" S "I" S ")V", (void *)n_identity_accept_number },
    { "nativePeerDevices", "(J" S ")[I", (void *)n_peer_devices },
    { "nativeHistory", "(J" S "JI)[Lorg/hush/sdk/HistoryEntry;", (void *)n_history },
    { "nativeHistoryDelete", "(JJ)V", (void *)n_history_delete },
    { "nativeGroupChange", "(JI" S "[B[" S ")" S, (void *)n_group_change },
    { "nativeGroupSend", "(J" S "[B)[B", (void *)n_group_send },
    { "nativeGroupTyping", "(J" S "Z)V", (void *)n_group_typing },
    { "nativeGroupSharePresence", "(J" S "Z)V", (void *)n_group_share_presence },
    { "nativeGroupInfo", "(J" S ")Lorg/hush/sdk/GroupInfo;", (void *)n_group_info },
    { "nativeGroups", "(J)[Lorg/hush/sdk/GroupInfo;", (void *)n_groups },
    { "nativeGroupHistory", "(J" S "JI)[Lorg/hush/sdk/HistoryEntry;", (void *)n_group_history },
    { "nativeCheck", "(J)V", (void *)n_check },
    { "nativeVersion", "()" S, (void *)n_version },
    { "nativeStrerror", "(I)" S, (void *)n_strerror },
};

static jclass global_class(JNIEnv *env, const char *name)
{
    jclass local = (*env)->FindClass(env, name);
    if (!local)
        return NULL;
    jclass g = (jclass)(*env)->NewGlobalRef(env, local);
    (*env)->DeleteLocalRef(env, local);
    return g;
}

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *reserved);
JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *reserved)
{
    (void)reserved;
    JNIEnv *env;
    if ((*vm)->GetEnv(vm, (void **)&env, JNI_VERSION_1_6) != JNI_OK)
        return JNI_ERR;
    g_vm = vm;
    if (sodium_init() < 0 || pthread_key_create(&g_detach_key, detach_thread) != 0)
        return JNI_ERR;
    if (!(g_exc_cls = global_class(env, EXC_CLASS)) || !(g_hist_cls = global_class(env, HISTORY_CLASS)) ||
        !(g_bridge_cls = global_class(env, BRIDGE_CLASS)) || !(g_string_cls = global_class(env, "java/lang/String")) ||
        !(g_dev_cls = global_class(env, DEVICE_CLASS)) || !(g_att_cls = global_class(env, ATTACHMENT_CLASS)) ||
        !(g_group_cls = global_class(env, GROUP_CLASS)))
        return JNI_ERR;
    g_dev_ctor = (*env)->GetMethodID(env, g_dev_cls, "<init>", "(I" S "JJZZ)V");
    g_exc_ctor = (*env)->GetMethodID(env, g_exc_cls, "<init>", "(I" S ")V");
    g_hist_ctor = (*env)->GetMethodID(env, g_hist_cls, "<init>", "(JZ" S "I[BJJZ[BZZ)V");
    g_group_ctor = (*env)->GetMethodID(env, g_group_cls, "<init>", "(" S "[BJZZ[" S "[ZJZ)V");
    g_on_group_typing = (*env)->GetMethodID(env, g_bridge_cls, "onGroupTyping", "(" S S "IZ)V");
    g_att_ctor = (*env)->GetMethodID(env, g_att_cls, "<init>", "([BZ" S S S "JIJJ[B)V");
    g_on_file = (*env)->GetMethodID(env, g_bridge_cls, "onFile", "([BIJJI)V");
    g_on_message = (*env)->GetMethodID(env, g_bridge_cls, "onMessage", "(I" S "I[BJJ" S "J[B" S ")V");
    g_on_link_code = (*env)->GetMethodID(env, g_bridge_cls, "onLinkCode", "(" S ")V");
    g_on_devices_changed = (*env)->GetMethodID(env, g_bridge_cls, "onDevicesChanged", "(" S ")V");
    g_on_receipt = (*env)->GetMethodID(env, g_bridge_cls, "onReceipt", "(" S "[BI)V");
    g_on_typing = (*env)->GetMethodID(env, g_bridge_cls, "onTyping", "(" S "IZ)V");
    g_on_presence = (*env)->GetMethodID(env, g_bridge_cls, "onPresence", "(" S "ZJ)V");
    g_on_identity = (*env)->GetMethodID(env, g_bridge_cls, "onIdentityChanged", "(" S "I" S S ")V");
    g_on_connection = (*env)->GetMethodID(env, g_bridge_cls, "onConnection", "(II)V");
    g_on_error = (*env)->GetMethodID(env, g_bridge_cls, "onError", "(I" S ")V");
    if (!g_exc_ctor || !g_hist_ctor || !g_dev_ctor || !g_on_message || !g_on_receipt || !g_on_typing || !g_on_presence ||
        !g_on_link_code || !g_on_devices_changed || !g_att_ctor || !g_on_file || !g_group_ctor || !g_on_group_typing ||
        !g_on_identity || !g_on_connection || !g_on_error)
        return JNI_ERR;
    jclass client = (*env)->FindClass(env, CLIENT_CLASS);
    if (!client)
        return JNI_ERR;
    jint r = (*env)->RegisterNatives(env, client, g_natives, (jint)(sizeof g_natives / sizeof g_natives[0]));
    (*env)->DeleteLocalRef(env, client);
    return r == 0 ? JNI_VERSION_1_6 : JNI_ERR;
}
#undef S
