// Lateness histogram with the peers' layout (../shared/peers/README.md): 1 us buckets below 128 us, then 64
// sub-buckets per power of two; one shard per recording thread so two cores never share a cache line.
// Percentiles report the bucket's upper bound, capped at the exact maximum.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

namespace tickhost::bench {

class Histogram {
public:
    static constexpr int kShards = 64;
    static constexpr int kLinear = 128;
    static constexpr int kSub = 64;
    static constexpr int kBuckets = kLinear + 34 * kSub;

    Histogram() : shards_(new Shard[kShards]) {}

    static int bucket_of(uint64_t us) {
        if (us < uint64_t(kLinear)) return int(us);
        int e = 63 - __builtin_clzll(us);
        if (e > 40) e = 40, us = (1ull << 41) - 1;
        return kLinear + (e - 7) * kSub + int((us >> (e - 6)) & (kSub - 1));
    }
    static uint64_t bucket_upper(int idx) {
        if (idx < kLinear) return uint64_t(idx);
        int e = 7 + (idx - kLinear) / kSub;
        uint64_t m = uint64_t((idx - kLinear) % kSub);
        return ((kSub + m) << (e - 6)) + (1ull << (e - 6)) - 1;
    }

    // Lateness in ns (negative: the run started before its due time).
    void record(int64_t late_ns) {
        static std::atomic<int> next{0};
        static thread_local int shard = next.fetch_add(1, std::memory_order_relaxed) % kShards;
        Shard& s = shards_[shard];
        uint64_t us = 0;
        if (late_ns < 0)
            s.early.fetch_add(1, std::memory_order_relaxed);
        else
            us = uint64_t(late_ns) / 1000;
        s.b[bucket_of(us)].fetch_add(1, std::memory_order_relaxed);
        uint64_t cur = s.max.load(std::memory_order_relaxed);
        while (us > cur && !s.max.compare_exchange_weak(cur, us, std::memory_order_relaxed)) {
        }
    }

    struct Summary {
        uint64_t count = 0, early = 0, max_us = 0, p50_us = 0, p99_us = 0;
    };
    Summary summarize() const {
        Summary r;
        std::unique_ptr<uint64_t[]> tot(new uint64_t[kBuckets]());
        for (int s = 0; s < kShards; ++s) {
            for (int i = 0; i < kBuckets; ++i) tot[i] += shards_[s].b[i].load(std::memory_order_relaxed);
            r.max_us = std::max(r.max_us, shards_[s].max.load(std::memory_order_relaxed));
            r.early += shards_[s].early.load(std::memory_order_relaxed);
        }
        for (int i = 0; i < kBuckets; ++i) r.count += tot[i];
        r.p50_us = pct(tot.get(), r.count, 0.50, r.max_us);
        r.p99_us = pct(tot.get(), r.count, 0.99, r.max_us);
        return r;
    }

private:
    struct alignas(64) Shard {
        std::atomic<uint64_t> b[kBuckets] = {};
        alignas(64) std::atomic<uint64_t> max{0};
        std::atomic<uint64_t> early{0};
    };
    static uint64_t pct(const uint64_t* tot, uint64_t count, double p, uint64_t max_us) {
        if (count == 0) return 0;
        uint64_t rank = uint64_t(p * double(count));
        if (double(rank) < p * double(count)) ++rank;
        if (rank == 0) rank = 1;
        uint64_t cum = 0;
        for (int i = 0; i < kBuckets; ++i) {
            cum += tot[i];
            if (cum >= rank) return std::min(bucket_upper(i), max_us);
        }
        return max_us;
    }
    std::unique_ptr<Shard[]> shards_;
};

}  // namespace tickhost::bench
