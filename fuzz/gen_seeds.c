/*
 * gen_seeds.c - writes a seed corpus for every harness into DIR/<harness>/, made from real data:
 * frames a client and the relay exchange, the example configuration, exported bundles, envelopes
 * from a real session, sealed rows, real database files.   usage: gen_seeds DIR
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include <curve.h>

#include "../sdk/internal.h"
#include "fuzz.h"
#include "hush_wire.h"
#include "relay.h"
#include "webpush.h"

static const char *g_dir;

static void put(const char *harness, const char *name, const uint8_t *prefix, size_t plen, const void *data, size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_dir, harness);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", g_dir, harness, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (plen)
        fwrite(prefix, 1, plen, f);
    fwrite(data, 1, len, f);
    fclose(f);
}

static void copy_file(const char *harness, const char *name, const char *src);

/* A real database as a seed, compacted so it fits the fuzzers' -max_len: a copy with 512-byte pages,
 * vacuumed, in rollback-journal mode (opening it switches it to WAL, as any first open does). */
static void put_db(const char *name, const char *src)
{
    char tmp[600], sql[700];
    snprintf(tmp, sizeof tmp, "%s.compact", src);
    unlink(tmp);
    FILE *in = fopen(src, "rb"), *out = fopen(tmp, "wb");
    if (!in || !out)
        abort();
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            abort();
    fclose(in);
    fclose(out);
    sqlite3 *h = NULL;
    snprintf(sql, sizeof sql, "PRAGMA journal_mode=DELETE; PRAGMA page_size=512; VACUUM;");
    if (sqlite3_open(tmp, &h) != SQLITE_OK || sqlite3_exec(h, sql, NULL, NULL, NULL) != SQLITE_OK)
        abort();
    sqlite3_close(h);
    copy_file("dbfile", name, tmp);
    unlink(tmp);
}

/* A relay database with a little of everything hushd keeps: users, devices, prekeys, mail,
 * an invite, allow-lists, a link token. */
static void put_relay_db(void)
{
    char path[300], err[256];
    snprintf(path, sizeof path, "%s/seed-relay.db", fuzz_tmpdir());
    unlink(path);
    hstore *db = storage_open_db(path, 0, err, sizeof err);
    if (!db ||
        hstore_exec(db, "INSERT INTO users (username, created_at) VALUES ('alice', 1), ('bob', 2);"
                        "INSERT INTO devices (username, device_id, auth_key, identity_key, registration_id, spk_id,"
                        " spk_public, spk_signature, spk_timestamp, last_resort_id, last_resort_public, created_at)"
                        " VALUES ('alice', 1, zeroblob(32), x'05' || zeroblob(32), 7, 1, x'05' || zeroblob(32),"
                        " zeroblob(64), 1, 16777215, x'05' || zeroblob(32), 1),"
                        " ('bob', 1, zeroblob(32), x'05' || zeroblob(32), 8, 1, x'05' || zeroblob(32),"
                        " zeroblob(64), 1, NULL, NULL, 1);"
                        "INSERT INTO one_time_prekeys VALUES ('alice', 1, 1, x'05' || zeroblob(32)),"
                        " ('alice', 1, 2, x'05' || zeroblob(32));"
                        "INSERT INTO mailbox (recipient, recipient_device, sender, sender_device, client_msg_id,"
                        " envelope, received_at, expires_at) VALUES ('bob', 1, 'alice', 1, zeroblob(16), x'0102', 1, 99),"
                        " ('bob', 1, 'alice', 1, x'01' || zeroblob(15), x'0304', 2, 99);"
                        "INSERT INTO invites VALUES (zeroblob(32), 1, NULL, NULL);"
                        "INSERT INTO presence_allow VALUES ('alice', 'bob'), ('bob', 'alice');"
                        "INSERT INTO link_tokens VALUES (zeroblob(32), 'alice', 2, 1, 2, NULL);") != HSTORE_OK)
        abort();
    hstore_close(db);
    put_db("relay-db", path);
    unlink(path);
}

static void put_frame(const char *name, int authed, Hush__Frame *fr)
{
    size_t n = hush__frame__get_packed_size(fr);
    uint8_t *b = malloc(n ? n : 1);
    hush__frame__pack(fr, b);
    uint8_t p = (uint8_t)authed;
    put("frame", name, &p, 1, b, n);
    free(b);
}

static void copy_file(const char *harness, const char *name, const char *src)
{
    FILE *f = fopen(src, "rb");
    if (!f)
        return;
    uint8_t *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, 1 << 20, f);
    fclose(f);
    put(harness, name, NULL, 0, buf, n);
    free(buf);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_seeds DIR\n");
        return 2;
    }
    g_dir = argv[1];
    mkdir(g_dir, 0755);
    fuzz_deterministic_random();
    char pa[300], pb[300];
    snprintf(pa, sizeof pa, "%s/seed-alice.db", fuzz_tmpdir());
    snprintf(pb, sizeof pb, "%s/seed-bob.db", fuzz_tmpdir());
    uint8_t ka[32] = { 2 }, kb[32] = { FUZZ_DB_KEY_BYTE };
    hush_open_opts o = { HUSH_DURABILITY_NORMAL };
    hush_client *a = NULL, *b = NULL;
    if (hush_client_open(pa, ka, &o, &a) || hush_client_open(pb, kb, &o, &b) || hush_device_create(a, "alice", 1) ||
        hush_device_create(b, "bob", 1))
        abort();

    /* bundles */
    uint8_t *bundle = NULL;
    size_t blen = 0;
    if (hush_bundle_export(b, &bundle, &blen) || hush_bundle_import(a, bundle, blen, NULL, NULL))
        abort();
    put("bundle", "bundle-bob", NULL, 0, bundle, blen);
    hush_free(bundle);

    /* envelopes of a real session, in every mode of the envelope harness */
    uint8_t *env = NULL;
    size_t elen = 0;
    if (hush_encrypt(a, "bob", 1, (const uint8_t *)"first message", 13, NULL, NULL, &env, &elen))
        abort();
    uint8_t mode = 0;
    put("envelope", "prekey-envelope", &mode, 1, env, elen);
    Hush__Envelope *e = hush__envelope__unpack(NULL, elen, env);
    mode = 2;
    put("envelope", "prekey-ciphertext", &mode, 1, e->ciphertext.data, e->ciphertext.len);
    hush__envelope__free_unpacked(e, NULL);
    hush_free(env);
    uint8_t flips[4] = { 3, 10, 1, 1 };
    put("envelope", "flip", NULL, 0, flips, sizeof flips);
    flips[0] = 5; /* the same, on the harness's genuine group message */
    put("envelope", "flip-group", NULL, 0, flips, sizeof flips);
    /* a real SenderKeyMessage (group "fuzz-group", as in the harness) as mode 4's ciphertext */
    if (hush_group_distribution(a, "fuzz-group", "bob", 1, &env, &elen))
        abort();
    hush_free(env);
    if (hush_group_encrypt(a, "fuzz-group", (const uint8_t *)"group message", 13, NULL, &env, &elen))
        abort();
    e = hush__envelope__unpack(NULL, elen, env);
    mode = 4;
    put("envelope", "senderkey-ciphertext", &mode, 1, e->ciphertext.data, e->ciphertext.len);
    hush__envelope__free_unpacked(e, NULL);
    hush_free(env);

    /* relay frames: what a client sends and what it receives */
    uint8_t challenge[32], sig[64], auth[32], idk[33], *up = NULL;
    size_t uplen = 0;
    randombytes_buf(challenge, sizeof challenge);
    Hush__Hello h = HUSH__HELLO__INIT;
    h.min_version = h.max_version = 1;
    Hush__Frame f = HUSH__FRAME__INIT;
    f.id = 1;
    f.msg_case = HUSH__FRAME__MSG_HELLO;
    f.hello = &h;
    put_frame("hello", 0, &f);
    if (hush_auth_proof(a, "login", "ws://127.0.0.1:7443", NULL, 0, NULL, challenge, sig) ||
        hush_device_auth_key(a, auth) || hush_device_identity_key(a, idk) ||
        hush_prekey_upload(a, 5, &up, &uplen, NULL))
        abort();
    Hush__LoginRequest l = HUSH__LOGIN_REQUEST__INIT;
    l.username = "alice";
    l.device_id = 1;
    l.signature.data = sig;
    l.signature.len = 64;
    l.origin = "ws://127.0.0.1:7443";
    f.id = 2;
    f.msg_case = HUSH__FRAME__MSG_LOGIN;
    f.login = &l;
    put_frame("login", 0, &f);
    Hush__PreKeyUpload *keys = hush__pre_key_upload__unpack(NULL, uplen, up);
    Hush__RegisterRequest r = HUSH__REGISTER_REQUEST__INIT;
    r.username = "alice";
    r.device_id = 1;
    r.auth_key.data = auth;
    r.auth_key.len = 32;
    r.signature.data = sig;
    r.signature.len = 64;
    r.identity_key.data = idk;
    r.identity_key.len = 33;
    r.registration_id = 42;
    r.keys = keys;
    f.msg_case = HUSH__FRAME__MSG_REGISTER;
    f.register_ = &r;
    put_frame("register", 0, &f);
    f.msg_case = HUSH__FRAME__MSG_UPLOAD_PRE_KEYS;
    f.upload_pre_keys = keys;
    put_frame("upload", 1, &f);
    uint8_t mid[16] = { 1 }, envb[64] = { 9 };
    Hush__Recipient rc = HUSH__RECIPIENT__INIT;
    rc.username = "bob";
    rc.device_id = 1;
    rc.envelope.data = envb;
    rc.envelope.len = sizeof envb;
    Hush__Recipient *rcs[1] = { &rc };
    Hush__SendRequest s = HUSH__SEND_REQUEST__INIT;
    s.client_msg_id.data = mid;
    s.client_msg_id.len = 16;
    s.n_recipients = 1;
    s.recipients = rcs;
    f.msg_case = HUSH__FRAME__MSG_SEND;
    f.send = &s;
    put_frame("send", 1, &f);
    uint64_t seqs[2] = { 7, 8 };
    Hush__AckRequest ak = HUSH__ACK_REQUEST__INIT;
    ak.n_seqs = 2;
    ak.seqs = seqs;
    f.id = 0;
    f.msg_case = HUSH__FRAME__MSG_ACK;
    f.ack = &ak;
    put_frame("ack", 1, &f);
    Hush__Deliver dv = HUSH__DELIVER__INIT;
    dv.seq = 7;
    dv.from_username = "alice";
    dv.from_device = 1;
    dv.envelope = rc.envelope;
    dv.client_msg_id = s.client_msg_id;
    f.msg_case = HUSH__FRAME__MSG_DELIVER;
    f.deliver = &dv;
    put_frame("deliver", 1, &f);
    /* linking and removing devices */
    Hush__ProvisionRequest pq = HUSH__PROVISION_REQUEST__INIT;
    f.id = 3;
    f.msg_case = HUSH__FRAME__MSG_PROVISION;
    f.provision = &pq;
    put_frame("provision", 0, &f);
    Hush__LinkTokenRequest lt = HUSH__LINK_TOKEN_REQUEST__INIT;
    lt.address = "00112233445566778899aabbccddeeff";
    f.msg_case = HUSH__FRAME__MSG_LINK_TOKEN;
    f.link_token = &lt;
    put_frame("link_token", 1, &f);
    Hush__ProvisionSend ps = HUSH__PROVISION_SEND__INIT;
    ps.address = lt.address;
    ps.box = rc.envelope;
    f.msg_case = HUSH__FRAME__MSG_PROVISION_SEND;
    f.provision_send = &ps;
    put_frame("provision_send", 1, &f);
    Hush__RemoveDeviceRequest rd = HUSH__REMOVE_DEVICE_REQUEST__INIT;
    rd.device_id = 2;
    f.msg_case = HUSH__FRAME__MSG_REMOVE_DEVICE;
    f.remove_device = &rd;
    put_frame("remove_device", 1, &f);
    r.link_token = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    r.device_id = 2;
    f.msg_case = HUSH__FRAME__MSG_REGISTER;
    f.register_ = &r;
    put_frame("register_linked", 0, &f);
    f.id = 0;
    Hush__Provisioned pv = HUSH__PROVISIONED__INIT;
    pv.box = rc.envelope;
    f.msg_case = HUSH__FRAME__MSG_PROVISIONED;
    f.provisioned = &pv;
    put_frame("provisioned", 0, &f);
    Hush__DeviceListChanged dlc = HUSH__DEVICE_LIST_CHANGED__INIT;
    dlc.username = "alice";
    f.msg_case = HUSH__FRAME__MSG_DEVICE_LIST_CHANGED;
    f.device_list_changed = &dlc;
    put_frame("device_list_changed", 1, &f);
    uint32_t miss[1] = { 2 };
    Hush__DeviceMismatch dm = HUSH__DEVICE_MISMATCH__INIT, *dmp[1] = { &dm };
    dm.username = "bob";
    dm.n_missing = 1;
    dm.missing = miss;
    Hush__Result mres = HUSH__RESULT__INIT;
    mres.code = HUSH__ERROR_CODE__DEVICE_MISMATCH;
    mres.n_mismatches = 1;
    mres.mismatches = dmp;
    f.id = 4;
    f.msg_case = HUSH__FRAME__MSG_RESULT;
    f.result = &mres;
    put_frame("result_mismatch", 1, &f);
    hush__pre_key_upload__free_unpacked(keys, NULL);
    hush_free(up);

    /* a link box as a linking device makes it (an identity pair, contacts, a presence list) */
    {
        ec_key_pair *kp = NULL;
        signal_buffer *lpub = NULL, *lpriv = NULL;
        if (curve_generate_key_pair(a->sg, &kp) || ec_public_key_serialize(&lpub, ec_key_pair_get_public(kp)) ||
            ec_private_key_serialize(&lpriv, ec_key_pair_get_private(kp)))
            abort();
        uint8_t ck[33];
        if (hush_device_identity_key(b, ck))
            abort();
        Hush__LinkContact lc = HUSH__LINK_CONTACT__INIT, *lcp[1] = { &lc };
        lc.username = "bob";
        lc.device_id = 1;
        lc.identity_key.data = ck;
        lc.identity_key.len = 33;
        char *allow[1] = { "bob" };
        Hush__LinkBox lb = HUSH__LINK_BOX__INIT;
        lb.version = 1;
        lb.username = "alice";
        lb.device_id = 2;
        lb.link_token = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        lb.identity_public.data = signal_buffer_data(lpub);
        lb.identity_public.len = signal_buffer_len(lpub);
        lb.identity_private.data = signal_buffer_data(lpriv);
        lb.identity_private.len = signal_buffer_len(lpriv);
        lb.n_contacts = 1;
        lb.contacts = lcp;
        lb.n_presence_allow = 1;
        lb.presence_allow = allow;
        lb.relay_origin = "ws://127.0.0.1:7443";
        size_t n = hush__link_box__get_packed_size(&lb);
        uint8_t *buf = malloc(n);
        hush__link_box__pack(&lb, buf);
        put("linkbox", "box", NULL, 0, buf, n);
        free(buf);
        signal_buffer_free(lpub);
        signal_buffer_bzero_free(lpriv);
        SIGNAL_UNREF(kp);
    }

    /* a sealed row under the sealed harness's key and identity */
    hush_client sc;
    memset(&sc, 0, sizeof sc);
    memset(sc.seal_key, 7, sizeof sc.seal_key);
    uint8_t *ct = NULL;
    size_t clen = 0;
    if (hsdk_seal(&sc, "hush1|sessions|5:alice|1|0", (const uint8_t *)"session record", 14, &ct, &clen))
        abort();
    put("sealed", "session", NULL, 0, ct, clen);
    free(ct);

    /* the example configuration, and a minimal one */
    copy_file("config", "example", "relay/hushd.conf.example");
    const char *mini = "listen = 127.0.0.1:7443\nregistration = invite\nquota_bytes = 1m\n";
    put("config", "minimal", NULL, 0, mini, strlen(mini));

    /* push: a registration frame, an endpoint, a Web Push body (RFC 8291's example) */
    {
        uint8_t pk[WEBPUSH_P256_PUBLIC], au[WEBPUSH_AUTH_BYTES], body[300];
        if (webpush_b64url_decode("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
                                  pk, sizeof pk) != WEBPUSH_P256_PUBLIC ||
            webpush_b64url_decode("BTBZMqHH6r4Tts7J_aSIgg", au, sizeof au) != WEBPUSH_AUTH_BYTES)
            abort();
        Hush__PushRegisterRequest pr = HUSH__PUSH_REGISTER_REQUEST__INIT;
        pr.endpoint = "https://push.example.org/up/AbCdEf0123?up=1";
        pr.p256dh.data = pk;
        pr.p256dh.len = sizeof pk;
        pr.auth.data = au;
        pr.auth.len = sizeof au;
        Hush__Frame pf = HUSH__FRAME__INIT;
        pf.id = 9;
        pf.msg_case = HUSH__FRAME__MSG_PUSH_REGISTER;
        pf.push_register = &pr;
        size_t n = hush__frame__get_packed_size(&pf);
        uint8_t *fb = malloc(n), m0 = 0, m1 = 1, m2 = 2;
        if (!fb)
            abort();
        hush__frame__pack(&pf, fb);
        put("push", "register", &m0, 1, fb, n);
        put_frame("push-register", 1, &pf);
        free(fb);
        const char *url = "https://[2001:db8::1]:8443/wpush/v2/abc";
        put("push", "endpoint", &m1, 1, url, strlen(url));
        long bl = webpush_b64url_decode("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vC"
                                        "YLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXL"
                                        "WyouBWLVWGNWQexSgSxsj_Qulcy4a-fN", body, sizeof body);
        if (bl <= 0)
            abort();
        put("push", "rfc8291-body", &m2, 1, body, (size_t)bl);
    }

    /* attachment: a file message's pointer; a small file to encrypt (and one with a byte
     * changed); a ciphertext as a relay could serve it */
    {
        uint8_t blob[16] = { 7 }, key[32] = { 9 }, dg[32] = { 1 }, m0 = 0, m1 = 1, m2 = 2;
        Hush__AttachmentPointer p = HUSH__ATTACHMENT_POINTER__INIT;
        p.blob_id.data = blob;
        p.blob_id.len = 16;
        p.key.data = key;
        p.key.len = 32;
        p.digest.data = dg;
        p.digest.len = 32;
        p.size = 70000;
        p.blob_size = hsdk_file_blob_size(70000);
        p.chunk_size = HSDK_FILE_CHUNK;
        p.content_type = "image/jpeg";
        p.file_name = "holiday.jpg";
        p.thumbnail.data = key;
        p.thumbnail.len = 8;
        uint8_t packed[256];
        size_t pn = hush__attachment_pointer__pack(&p, packed);
        put("attachment", "pointer", &m0, 1, packed, pn);
        uint8_t file[3 + 70000];
        file[0] = 0x01, file[1] = 0x20, file[2] = 0; /* byte 288, unchanged */
        for (size_t i = 3; i < sizeof file; i++)
            file[i] = (uint8_t)(i * 7);
        put("attachment", "file", &m1, 1, file, sizeof file);
        file[2] = 1;
        put("attachment", "file-changed", &m1, 1, file, sizeof file);
        file[0] = 0, file[1] = 0, file[2] = 100;
        put("attachment", "served", &m2, 1, file, 4000);
    }

    /* room: a change as sent (mode 0: its signature is nobody's) and states for the admin to sign
     * (mode 1): the next version of the shared room (its id and prev_hash left zero: the harness
     * fills them in), and one that skips a version (fuzz/fuzz_room.c) */
    {
        uint8_t zid[16] = { 0 }, zhash[32] = { 0 }, rsig[64] = { 4 }, m0 = 0, m1 = 1;
        char *members[] = { "nora", "otto", "pia" }, *admins[] = { "nora" }, *removed[] = { "quin" };
        Hush__RoomState st = HUSH__ROOM_STATE__INIT;
        st.room_id.data = zid;
        st.room_id.len = 16;
        st.name = "fuzz";
        st.members = members;
        st.n_members = 3;
        st.admins = admins;
        st.n_admins = 1;
        st.version = 2;
        st.prev_hash.data = zhash;
        st.prev_hash.len = 32;
        st.author = "nora";
        st.changed_at_ms = 1764550000000ull;
        uint8_t sb[512], cb[700];
        size_t sl = hush__room_state__pack(&st, sb);
        put("room", "state-next", &m1, 1, sb, sl);
        Hush__RoomChange ch = HUSH__ROOM_CHANGE__INIT;
        ch.state.data = sb;
        ch.state.len = sl;
        ch.signature.data = rsig;
        ch.signature.len = 64;
        size_t cl = hush__room_change__pack(&ch, cb);
        put("room", "change", &m0, 1, cb, cl);
        st.version = 3;
        st.removed = removed;
        st.n_removed = 1;
        sl = hush__room_state__pack(&st, sb);
        put("room", "state-gap", &m1, 1, sb, sl);
    }

    /* blobs: op (kind in the low 3 bits, the upload in bits 3-4) then a 2-byte argument: an upload
     * created and filled, read back by both users, a wrong offset, status, a wrong digest, and
     * one over the limit (fuzz/fuzz_blobs.c) */
    {
        const uint8_t sched[] = { 0x00, 0x09, 0xc4, /* create 5001 bytes in upload 0 */
                                  0x01, 0x07, 0xd0, 0x02, 0x00, 0x05, 0x01, 0x0f, 0xa0, 0x05, 0x00, 0x00,
                                  0x01, 0x0f, 0xa0, 0x04, 0x00, 0x10, 0x44, 0x01, 0x00, 0x03, 0x00, 0x00,
                                  0x00, 0x01, 0xf5, /* create 1003 bytes in upload 1 */
                                  0x0f, 0x03, 0xea, 0x09, 0x27, 0x10, 0x0d, 0x00, 0x00,
                                  0x00, 0x80, 0xe8 /* over the limit */ };
        put("blobs", "fill-and-read", NULL, 0, sched, sizeof sched);
    }

    /* real database files */
    hush_client_close(a);
    hush_client_close(b);
    put_db("sdk-db", pb);
    put_relay_db();

    /* interaction schedules: op byte = kind << 1 | direction (0 alice->bob, 1 bob->alice);
     * kinds: 0,1 send; 2 deliver(k); 3 drop(k); 4 duplicate(k); 5 reorder(k); 6 tamper(k, at);
     * 7 reopen (fuzz/fuzz_interaction.c) */
    {
        uint8_t sched[256];
        size_t n = 0;
        for (int i = 0; i < 10; i++) { /* ping-pong */
            sched[n++] = 0x00, sched[n++] = 0x04, sched[n++] = 0;
            sched[n++] = 0x01, sched[n++] = 0x05, sched[n++] = 0;
        }
        put("interaction", "ping-pong", NULL, 0, sched, n);
        n = 0;
        for (int i = 0; i < 5; i++)
            sched[n++] = 0x00;
        sched[n++] = 0x0a, sched[n++] = 3; /* reorder */
        sched[n++] = 0x08, sched[n++] = 1; /* duplicate */
        sched[n++] = 0x06, sched[n++] = 2; /* drop */
        sched[n++] = 0x0e;                 /* reopen alice */
        sched[n++] = 0x0f;                 /* reopen bob */
        for (int i = 0; i < 6; i++)
            sched[n++] = 0x04, sched[n++] = 0;
        sched[n++] = 0x01, sched[n++] = 0x0c, sched[n++] = 0, sched[n++] = 0x55; /* bob sends, tampered */
        sched[n++] = 0x01, sched[n++] = 0x05, sched[n++] = 1, sched[n++] = 0x05, sched[n++] = 0;
        put("interaction", "reorder-dup-drop-tamper", NULL, 0, sched, n);
        n = 0;
        sched[n++] = 0x00; /* an old message held back ... */
        for (int i = 0; i < 8; i++) { /* ... while the ratchet turns eight times */
            sched[n++] = 0x00, sched[n++] = 0x04, sched[n++] = 1;
            sched[n++] = 0x01, sched[n++] = 0x05, sched[n++] = 0;
        }
        sched[n++] = 0x04, sched[n++] = 0; /* its chain is gone: lost by design */
        put("interaction", "chain-evicted", NULL, 0, sched, n);
    }
    /* relay state-machine schedules: op byte = kind * 3 + user (ann, ben, cat); kinds: 0,1 send
     * (arg: recipient, 3 = unknown; bit 7: as a room message); 2 ack own (arg); 3 ack any seq (3 bytes); 4 raw frame (len,
     * bytes); 5 reconnect; 6 read pushes; 7 fetch bundles / presence allow (arg)
     * (fuzz/fuzz_relay.c) */
    {
        const uint8_t basic[] = { 0, 1, 19, 7, 0, 0, 2, 17, 9, 0, 0, 1, 0, 3, 3, 0, 20, 8, 0, 21, 3, 22, 4 };
        put("relay", "send-read-ack", NULL, 0, basic, sizeof basic);
        /* room messages (arg bit 7): ann -> ben and cat, ben reads and acks, cat reconnects */
        const uint8_t room[] = { 0, 0x81, 0, 0x82, 19, 7, 0, 0, 17, 20, 8, 0 };
        put("relay", "room-send", NULL, 0, room, sizeof room);
        uint8_t raw[80];
        size_t n = 0;
        Hush__AckRequest ack = HUSH__ACK_REQUEST__INIT;
        uint64_t ack_seqs[2] = { 1, 2 };
        ack.seqs = ack_seqs;
        ack.n_seqs = 2;
        Hush__Frame fr = HUSH__FRAME__INIT;
        fr.id = 77;
        fr.msg_case = HUSH__FRAME__MSG_ACK;
        fr.ack = &ack;
        raw[n++] = 0, raw[n++] = 1; /* ann -> ben */
        raw[n++] = 12;              /* raw frame on ann's connection */
        size_t flen = hush__frame__get_packed_size(&fr);
        raw[n++] = (uint8_t)flen;
        hush__frame__pack(&fr, raw + n);
        n += flen;
        raw[n++] = 13, raw[n++] = 5, raw[n++] = 0xff, raw[n++] = 0x01, raw[n++] = 0x02, raw[n++] = 0x03, raw[n++] = 0x04;
        raw[n++] = 19; /* ben reads */
        put("relay", "raw-frames", NULL, 0, raw, n);
    }
    /* the fake relay's scripts: op byte % 14 = 0/1 answer the oldest request (how), 2 genuine
     * envelope (k | 0x80 redeliver), 3 fuzzed envelope (name, device, len, bytes), 4 stray Result
     * (code, id), 5 QueueEmpty, 6 PreKeysLow, 7 Presence, 8 Closing, 9 raw message, 10 raw bytes,
     * 11 control frame, 12 wait (ms), 13 hang up (fuzz/fuzz_client.c) */
    {
        const uint8_t login_receive[] = { 0, 0, 12, 16, 0, 0, 12, 16, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 1, 2, 2,
                                          2, 0x81, 2, 5, 5, 12, 16, 0, 0, 12, 16, 0, 0, 12, 19 };
        put("client", "login-receive", NULL, 0, login_receive, sizeof login_receive);
        uint8_t login_send[64];
        size_t ls = 0;
        for (int i = 0; i < 8; i++) /* answer everything OK, giving the client time after each */
            login_send[ls++] = 0, login_send[ls++] = 0, login_send[ls++] = 12, login_send[ls++] = 19,
            login_send[ls++] = 12, login_send[ls++] = 19, login_send[ls++] = 12, login_send[ls++] = 19;
        put("client", "login-send", NULL, 0, login_send, ls);
        const uint8_t pushes[] = { 0, 0, 12, 19, 0, 0, 12, 19, 6, 3, 7, 0x80, 5, 11, 0, 11, 1, 4, 0, 3,
                                   3, 0, 1, 4, 1, 2, 3, 4, 9, 3, 0x08, 0x01, 0x10, 12, 19, 8, 14, 12, 19 };
        put("client", "pushes", NULL, 0, pushes, sizeof pushes);
        const uint8_t refused[] = { 0, 0, 12, 19, 12, 19, 12, 19, 0, 0xc3, 12, 19, 12, 19, 0, 0, 12, 19 };
        put("client", "login-refused", NULL, 0, refused, sizeof refused);
        /* registration refused with STORAGE_FAILED (not fatal: the connection stays, the prekeys
         * in it must be put back); then login OK, PreKeysLow, and every later request refused */
        const uint8_t keys_back[] = { 0, 0, 12, 19, 12, 19, 12, 19, 0, 0xd0, 12, 19, 12, 19,
                                      6, 3, 12, 19, 12, 19, 12, 19, 0, 0xd0, 12, 19, 0, 0xd0, 12, 19,
                                      0, 0xd0, 12, 19, 0, 0xd0, 12, 19 };
        put("client", "prekeys-refused", NULL, 0, keys_back, sizeof keys_back);
        /* registered, then a low-stock notice: the upload must carry new keys only */
        const uint8_t low[] = { 0, 0, 12, 19, 12, 19, 12, 19, 0, 0, 12, 19, 12, 19, 12, 19, 6, 3, 12, 19, 12, 19,
                                12, 19, 12, 19 };
        put("client", "login-prekeys-low", NULL, 0, low, sizeof low);
    }
    printf("seeds written to %s\n", g_dir);
    return 0;
}
