/*
 * Imports libhush the way Swift does - as the Clang module CHush declared in
 * ../Sources/CHush/module.modulemap - and uses its types and functions. Built and run by
 * `make test-modulemap` (part of `make test`): a broken module map or a header that does not
 * build as a module fails it.
 */
@import CHush;

#include <stdio.h>
#include <string.h>

int main(void)
{
    hush_callbacks cb;
    memset(&cb, 0, sizeof cb);
    hush_net_opts opts = { "ws://127.0.0.1:7443", NULL, NULL, 0 };
    hush_client *c = NULL;
    /* a call through the module, and an error path that needs no files */
    hush_err e = hush_client_open(NULL, NULL, NULL, &c);
    if (e != HUSH_ERR_INVALID_ARG || c != NULL) {
        fprintf(stderr, "module CHush: unexpected %d\n", (int)e);
        return 1;
    }
    if (HUSH_MESSAGE_ID_BYTES != 16 || opts.relay_url == NULL || cb.on_message != NULL)
        return 1;
    printf("module CHush: imported; libhush %s; %s\n", hush_version(), hush_strerror(e));
    return 0;
}
