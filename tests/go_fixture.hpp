// The real Go plugin fixture (tests/fixtures/go, built by tests/CMakeLists.txt as fx_go_v1.so and fx_go_v2.so
// when Go is installed). Without Go, a test that uses it skips and says why, never silently.
// (It runs under every TICKHOST_SANITIZE: the host with ASan+UBSan, leak checks included, or TSan loads and
// runs the Go runtime; the fixture's own C and Go code are not instrumented.)
#pragma once

#ifndef TICKHOST_HAVE_GO
#error "tests/CMakeLists.txt defines TICKHOST_HAVE_GO (0 or 1) for the tests that use the Go fixture"
#endif

// At the top of a test that uses the Go fixture.
#if TICKHOST_HAVE_GO
#define SKIP_WITHOUT_GO() \
    do {                  \
    } while (0)
#else
#define SKIP_WITHOUT_GO() GTEST_SKIP() << "golang-go is not installed (scripts/deps.sh test installs it)"
#endif
