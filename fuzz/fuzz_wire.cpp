// Fuzzes the isolation protocol's decoders (host/src/isolation/wire.hpp) with arbitrary datagrams:
// decode_worker above all (what the host reads from an untrusted child), and decode_host. Every refusal
// carries a one-line error; anything accepted re-encodes to exactly the input (the encoding is canonical),
// decodes again to the same, and fits a datagram. Config and Tasks also go through the splitters, which must
// give back the input as their single datagram.
#include "isolation/wire.hpp"

#include <cstdlib>
#include <string>
#include <vector>

namespace {

using namespace tickhost::detail::wire;
using Bytes = std::vector<uint8_t>;

void check(bool ok) {
    if (!ok) std::abort();
}

uint32_t header_seq(const uint8_t* data) {
    return uint32_t(data[4]) | uint32_t(data[5]) << 8 | uint32_t(data[6]) << 16 | uint32_t(data[7]) << 24;
}

// A refusal: one line, something said.
void check_refusal(const std::string& err) { check(!err.empty() && err.find('\n') == std::string::npos); }

// The splitters on a list that came in one datagram: that same datagram back, or nothing for an empty list.
void check_split(const Config& m, uint32_t seq, const Bytes& input) {
    std::vector<Bytes> out;
    std::string err;
    check(encode_config(m.entries, seq, &out, &err));
    check(m.entries.empty() ? out.empty() : out.size() == 1 && out[0] == input);
}
void check_split(const Tasks& m, uint32_t seq, const Bytes& input) {
    std::vector<Bytes> out;
    std::string err;
    const bool numbered = m.entries.empty() || uint64_t(m.first_index) + (m.entries.size() - 1) <= UINT32_MAX;
    check(encode_tasks(m.entries, seq, &out, &err, m.first_index) == numbered);
    if (!numbered) return check_refusal(err);  // a worker may claim such indexes; the host checks them later
    check(m.entries.empty() ? out.empty() : out.size() == 1 && out[0] == input);
}

// Re-encodes an accepted frame, checks it is the input, decodes that again and re-encodes once more.
template <class Message, class Decode>
void check_accepted(const Message& msg, uint32_t seq, const Bytes& input, Decode decode) {
    Bytes again;
    std::string err;
    check(encode(msg, seq, &again, &err));
    check(again == input);
    const auto twice = decode(again.data(), again.size(), &err);
    check(twice && twice->seq == seq && twice->msg.index() == msg.index());
    Bytes third;
    check(encode(twice->msg, twice->seq, &third, &err) && third == input);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const Bytes input(data, data + size);  // exactly `size` bytes: ASan sees any read past them
    std::string err;
    const auto worker = decode_worker(input.data(), input.size(), &err);
    if (worker) {
        check(size <= kMaxMessage && worker->seq == header_seq(input.data()));
        check_accepted(worker->msg, worker->seq, input, decode_worker);
        if (const auto* t = std::get_if<Tasks>(&worker->msg)) check_split(*t, worker->seq, input);
    } else {
        check_refusal(err);
    }
    err.clear();
    const auto host = decode_host(input.data(), input.size(), &err);
    if (host) {
        check(!worker);  // the two directions share no type
        check(size <= kMaxMessage && host->seq == header_seq(input.data()));
        check_accepted(host->msg, host->seq, input, decode_host);
        if (const auto* c = std::get_if<Config>(&host->msg)) check_split(*c, host->seq, input);
    } else {
        check_refusal(err);
    }
    return 0;
}
