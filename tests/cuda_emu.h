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

using EmuLauncher = std::function<std::string(dim3, dim3, int, const char**, void**)>;

template <typename... A>
EmuLauncher emu_launcher(std::string name, void (*k)(A...), bool sync) {
    return [=](dim3 grid, dim3 block, int nargs, const char** codes, void** vals) -> std::string {
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
        for (unsigned i = 0; i < nblocks; ++i) {
            const unsigned lin = emu_reverse ? nblocks - 1 - i : i;
            const dim3 b{lin % grid.x, (lin / grid.x) % grid.y, lin / (grid.x * grid.y)};
            auto run = [&](unsigned t) {
                blockIdx = b;
                threadIdx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                emu_call(k, vals, std::index_sequence_for<A...>{});
            };
            if (!sync) {
                emu_barrier.total = 0;
                for (unsigned t = 0; t < nthreads; ++t) run(emu_reverse ? nthreads - 1 - t : t);
            } else {
                emu_barrier.total = nthreads;
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (unsigned t = 0; t < nthreads; ++t) threads.emplace_back(run, t);
                for (auto& th : threads) th.join();
            }
        }
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

extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, int nargs, const char** codes, void** vals,
                          char* err, int errlen) {
    auto it = emu_registry().find(name);
    std::string msg = it == emu_registry().end()
                          ? std::string("no kernel named ") + name + " is registered"
                          : it->second(dim3{gx, gy, gz}, dim3{bx, by, bz}, nargs, codes, vals);
    std::snprintf(err, errlen, "%s", msg.c_str());
    return msg.empty() ? 0 : 1;
}
