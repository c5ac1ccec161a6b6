// SHA-256 (OpenSSL EVP) against FIPS 180-4 known answers, in one piece and streamed in odd chunks: it backs
// the `sha256` pins of host.toml, a security control.
#include <gtest/gtest.h>

#include <string>

#include "sha256.hpp"

using tickhost::detail::Sha256;

namespace {
std::string streamed(const std::string& data, size_t chunk) {
    Sha256 h;
    for (size_t at = 0; at < data.size(); at += chunk) h.update(data.data() + at, std::min(chunk, data.size() - at));
    return Sha256::hex(h.finish());
}
}  // namespace

TEST(Sha256, KnownAnswers) {
    EXPECT_EQ(Sha256::hex_of(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(Sha256::hex_of("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(Sha256::hex_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const std::string million(1000000, 'a');
    EXPECT_EQ(Sha256::hex_of(million), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    for (size_t chunk : {1u, 3u, 63u, 64u, 65u, 4096u, 262144u})
        EXPECT_EQ(streamed(million, chunk), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") << chunk;
}
