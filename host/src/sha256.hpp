// SHA-256 of a plugin file's content (its identity, and the `sha256` pins of host.toml): OpenSSL's EVP
// interface, which uses the CPU's SHA instructions where there are some. One object hashes one stream.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

struct evp_md_ctx_st;

namespace tickhost::detail {

class Sha256 {
public:
    Sha256();  // throws std::runtime_error if OpenSSL cannot provide SHA-256
    ~Sha256();
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;
    void update(const void* data, size_t len);
    std::array<uint8_t, 32> finish();
    static std::string hex(const std::array<uint8_t, 32>& digest);
    static std::string hex_of(std::string_view data);

private:
    evp_md_ctx_st* ctx_;
};

}  // namespace tickhost::detail
