/* Every status code plugin.h defines has its own name from th_status_name (a C99 header function), and the
 * name is the macro's own spelling: a new code without a case fails here. */
#include <tickhost/plugin.h>

#include <stdio.h>
#include <string.h>

#define CHECK(code)                                                                         \
    do {                                                                                    \
        if (strcmp(th_status_name(code), #code) != 0) {                                     \
            printf("th_status_name(%s) = %s\n", #code, th_status_name(code));               \
            return 1;                                                                       \
        }                                                                                   \
        ++n;                                                                                \
    } while (0)

int main(void) {
    int n = 0;
    CHECK(TH_OK);
    CHECK(TH_ERROR);
    CHECK(TH_CANCELLED);
    CHECK(TH_E_STALE_CONTEXT);
    CHECK(TH_E_NOT_FOUND);
    CHECK(TH_E_WRONG_TYPE);
    CHECK(TH_E_INVALID_ARGUMENT);
    CHECK(TH_E_NOT_ALLOWED);
    CHECK(TH_E_NOT_A_LIBRARY);
    CHECK(TH_E_NO_ENTRY);
    CHECK(TH_E_ENTRY_NULL);
    CHECK(TH_E_ABI_MAJOR);
    CHECK(TH_E_ABI_MINOR_TOO_NEW);
    CHECK(TH_E_BAD_DESCRIPTOR);
    CHECK(TH_E_INIT_FAILED);
    CHECK(TH_E_DUPLICATE_NAME);
    CHECK(TH_E_NO_TASKS);
    CHECK(TH_E_INSECURE_FILE);
    CHECK(TH_E_CHECKSUM_MISMATCH);
    CHECK(TH_E_FILE_TOO_LARGE);
    CHECK(TH_E_TOO_MANY_TASKS);
    CHECK(TH_E_ENTRY_TIMEOUT);
    if (strcmp(th_status_name(12345), "TH_UNKNOWN") != 0) return 1;
    printf("%d status names\n", n);
    return 0;
}
