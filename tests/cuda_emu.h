// A host emulator of the CUDA built-ins that kernels/*.cu use, so the kernels' own C++ can be built
// with g++ and run on the CPU (tests/test_gpu.py, device "emulated"): the index arithmetic, the
// launch configuration and the argument lists of kernels/gpu.py are then tested on any machine.
//
// A launch runs every block in turn. Threads of a block run one after another, except for kernels
// registered with sync=true (those calling __syncthreads), whose threads run concurrently, one
// std::thread each, meeting at a barrier. __shared__ arrays become function-local statics: one per
// kernel instantiation, shared by the threads of the block being run.
//
// emu_set_reverse(1) runs the blocks, and the threads of a non-sync block, in the opposite order:
// a kernel whose result depends on which thread runs first (one thread reading what another writes,
// two threads writing one element) then gives different bits, which a test compares.
//
// emu_set_owner_check(1) records which thread (a block, for sync kernels) writes each element of
// each output (every non-const pointer argument; emu_launch is given each argument's bytes) and fails
// the launch when a second one changes an element the first already wrote: on a GPU, where they run
// at once, that is a race (two threads' `out[i] += v` lose one of the updates), although run one at a
// time here, in either order, they give the right sum. Writes are seen as changed bytes (outputs are
// NaN-poisoned by the tests), so a second thread storing the bytes an element already holds goes
// unnoticed: a racy read-modify-write that happens to keep the value (a max that does not change it)
// passes; no kernel here reads an output another thread writes.
//
// emu_launch checks every argument against the kernel's C++ parameter type ("p:f4" = pointer to a
// 4-byte float, "s:i8" = 8-byte integer scalar...), which CuPy does not: a wrong scalar type or a
// wrong argument count there is silent memory corruption.
#pragma once

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

using std::exp;
using std::log;
using std::max;
using std::min;
using std::pow;
using std::sqrt;

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline double __longlong_as_double(long long i) {
    double d;
    std::memcpy(&d, &i, sizeof d);
    return d;
}

// __syncthreads: a reusable barrier for the threads of the running block
struct EmuBarrier {
    std::mutex m;
    std::condition_variable cv;
    unsigned total = 0, count = 0, generation = 0;
    bool misused = false;                   // __syncthreads in a kernel registered without sync
    void wait() {
        std::unique_lock<std::mutex> lock(m);
        if (total == 0) {
            misused = true;
            return;
        }
        const unsigned gen = generation;
        if (++count == total) {
            count = 0;
            ++generation;
            cv.notify_all();
        } else {
            cv.wait(lock, [&] { return generation != gen; });
        }
    }
};
static EmuBarrier emu_barrier;
inline void __syncthreads() { emu_barrier.wait(); }

// the type code of a kernel parameter, as the Python side writes it for an argument
template <typename A>
const char* emu_code() {
    using U = std::remove_cv_t<std::remove_pointer_t<A>>;
    constexpr bool p = std::is_pointer_v<A>;
    if constexpr (std::is_same_v<U, float>) return p ? "p:f4" : "s:f4";
    else if constexpr (std::is_same_v<U, double>) return p ? "p:f8" : "s:f8";
    else if constexpr (std::is_same_v<U, int>) return p ? "p:i4" : "s:i4";
    else if constexpr (std::is_same_v<U, long long>) return p ? "p:i8" : "s:i8";
    else return "?";
}

template <typename A>
A emu_read(void* p) {
    A a;
    std::memcpy(&a, p, sizeof(A));
    return a;
}

template <typename... A, std::size_t... I>
void emu_call(void (*k)(A...), void** vals, std::index_sequence<I...>) {
    k(emu_read<A>(vals[I])...);
}

static bool emu_reverse = false;
static bool emu_owner_check = false;

template <typename A>
constexpr bool emu_is_output() {                 // a pointer to non-const: the kernel may write there
    if constexpr (std::is_pointer_v<A>) return !std::is_const_v<std::remove_pointer_t<A>>;
    else return false;
}
template <typename A>
constexpr std::size_t emu_item_size() {
    if constexpr (std::is_pointer_v<A>) return sizeof(std::remove_pointer_t<A>);
    else return 0;
}

// Which unit (thread or block) of the running launch wrote each element of each output.
struct EmuOwners {
    struct Out {
        int arg;
        unsigned char* p;
        std::size_t bytes, item;
        std::vector<unsigned char> shadow;       // the output as the previous unit left it
        std::vector<long long> owner;            // per element: the unit that changed it, or -1
    };
    std::vector<Out> outs;
    std::string describe(long long unit, unsigned nthreads, bool by_block) const {
        return by_block ? "block " + std::to_string(unit)
                        : "thread " + std::to_string(unit % nthreads) + " of block " + std::to_string(unit / nthreads);
    }
    // after a unit ran: claim what it changed; a message when another unit had changed it before
    std::string claim(long long unit, unsigned nthreads, bool by_block) {
        constexpr std::size_t CHUNK = 4096;      // a multiple of every item size
        for (auto& o : outs) {
            for (std::size_t off = 0; off < o.bytes; off += CHUNK) {
                const std::size_t len = std::min(CHUNK, o.bytes - off);
                if (std::memcmp(o.p + off, o.shadow.data() + off, len) == 0) continue;
                for (std::size_t b = off; b < off + len; b += o.item) {
                    if (std::memcmp(o.p + b, o.shadow.data() + b, o.item) == 0) continue;
                    long long& w = o.owner[b / o.item];
                    if (w >= 0 && w != unit)
                        return "element " + std::to_string(b / o.item) + " of argument " + std::to_string(o.arg) +
                               " written by " + describe(w, nthreads, by_block) + " and by " +
                               describe(unit, nthreads, by_block) + " of one launch (a race on a GPU)";
                    w = unit;
                    std::memcpy(o.shadow.data() + b, o.p + b, o.item);
                }
            }
        }
        return "";
    }
};

using EmuLauncher = std::function<std::string(dim3, dim3, int, const char**, void**, const long long*)>;

template <typename... A>
EmuLauncher emu_launcher(std::string name, void (*k)(A...), bool sync) {
    return [=](dim3 grid, dim3 block, int nargs, const char** codes, void** vals,
               const long long* arg_bytes) -> std::string {
        constexpr int n = sizeof...(A);
        if (nargs != n)
            return name + ": expected " + std::to_string(n) + " arguments, got " + std::to_string(nargs);
        const char* want[] = {emu_code<A>()...};
        for (int i = 0; i < n; ++i)
            if (std::strcmp(want[i], codes[i]) != 0)
                return name + ": argument " + std::to_string(i) + " must be " + want[i] + ", got " + codes[i];
        blockDim = block;
        gridDim = grid;
        const unsigned nthreads = block.x * block.y * block.z;
        emu_barrier.misused = false;
        const unsigned nblocks = grid.x * grid.y * grid.z;
        EmuOwners owners;
        if (emu_owner_check) {
            constexpr bool is_out[] = {emu_is_output<A>()...};
            constexpr std::size_t item[] = {emu_item_size<A>()...};
            for (int i = 0; i < n; ++i)
                if (is_out[i]) {
                    auto* p = emu_read<unsigned char*>(vals[i]);
                    const auto bytes = (std::size_t)arg_bytes[i];
                    owners.outs.push_back({i, p, bytes, item[i], std::vector<unsigned char>(p, p + bytes),
                                           std::vector<long long>(bytes / item[i], -1)});
                }
        }
        std::string race;
        for (unsigned i = 0; i < nblocks && race.empty(); ++i) {
            const unsigned lin = emu_reverse ? nblocks - 1 - i : i;
            const dim3 b{lin % grid.x, (lin / grid.x) % grid.y, lin / (grid.x * grid.y)};
            auto run = [&](unsigned t) {
                blockIdx = b;
                threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                emu_call(k, vals, std::index_sequence_for<A...>{});
            };
            if (!sync) {
                emu_barrier.total = 0;
                for (unsigned t = 0; t < nthreads && race.empty(); ++t) {
                    const unsigned tt = emu_reverse ? nthreads - 1 - t : t;
                    run(tt);
                    if (emu_owner_check) race = owners.claim((long long)lin * nthreads + tt, nthreads, false);
                }
            } else {
                emu_barrier.total = nthreads;
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(run, t);
                for (auto& th : threads) th.join();
                if (emu_owner_check) race = owners.claim(lin, nthreads, true);
            }
        }
        if (!race.empty()) return name + ": " + race;
        if (emu_barrier.misused) return name + ": calls __syncthreads but was registered with sync=false";
        return "";
    };
}

static std::map<std::string, EmuLauncher>& emu_registry() {
    static std::map<std::string, EmuLauncher> r;
    return r;
}

#define EMU_REGISTER(expr, sync) emu_registry()[#expr] = emu_launcher(#expr, &expr, sync)

extern "C" void emu_set_reverse(int reverse) { emu_reverse = reverse != 0; }
extern "C" void emu_set_owner_check(int on) { emu_owner_check = on != 0; }

extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, int nargs, const char** codes, void** vals,
                          const long long* arg_bytes, char* err, int errlen) {
    auto it = emu_registry().find(name);
    std::string msg = it == emu_registry().end()
                          ? std::string("no kernel named ") + name + " is registered"
                          : it->second(dim3{gx, gy, gz}, dim3{bx, by, bz}, nargs, codes, vals, arg_bytes);
    std::snprintf(err, errlen, "%s", msg.c_str());
    return msg.empty() ? 0 : 1;
}
