#include "sha256.hpp"

#include <openssl/evp.h>

#include <stdexcept>

namespace tickhost::detail {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
        EVP_MD_CTX_free(ctx_);
        throw std::runtime_error("OpenSSL could not start a SHA-256 digest");
    }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::update(const void* data, size_t len) {
    if (len && EVP_DigestUpdate(ctx_, data, len) != 1) throw std::runtime_error("OpenSSL SHA-256 update failed");
}

std::array<uint8_t, 32> Sha256::finish() {
    std::array<uint8_t, 32> out{};
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(ctx_, out.data(), &n) != 1 || n != out.size())
        throw std::runtime_error("OpenSSL SHA-256 final failed");
    return out;
}

std::string Sha256::hex(const std::array<uint8_t, 32>& d) {
    static const char* digits = "0123456789abcdef";
    std::string s(64, '0');
    for (size_t i = 0; i < d.size(); ++i) {
        s[2 * i] = digits[d[i] >> 4];
        s[2 * i + 1] = digits[d[i] & 15];
    }
    return s;
}

std::string Sha256::hex_of(std::string_view data) {
    Sha256 h;
    h.update(data.data(), data.size());
    return hex(h.finish());
}

}  // namespace tickhost::detail
