// The scheduler behind cuda_emu.h: fibers, barriers, shuffles and launches.
//
// Each OS thread keeps a pool of fibers, created once with makecontext and reused by every
// block and launch after that; switches between a fiber and the scheduler are _setjmp /
// _longjmp, which unlike swapcontext make no system call (swapcontext saves the signal mask),
// so a switch costs a few nanoseconds instead of a microsecond.
#include "cuda_emu.h"

#include <setjmp.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

namespace emu {
namespace {

constexpr std::size_t kStackBytes = 64 * 1024;
constexpr unsigned int kWarp = 32;

enum class State { Runnable, AtBarrier, AtShuffle, Done };

struct Fiber {
    jmp_buf env;
    std::unique_ptr<char[]> stack;
    dim3 idx;
    State state = State::Runnable;
    uint64_t posted = 0;
    unsigned int src_lane = 0;
    const char* what = "";
};

// Everything about the launch running on this OS thread.
struct Launch {
    const KernelEntry* kernel = nullptr;
    void** args = nullptr;
    dim3 grid, block, block_idx;
    std::vector<char> shared;
    std::vector<Fiber*> fibers;
    unsigned int current = 0;
};

thread_local Launch* active = nullptr;
// This thread's fibers, and where a fiber jumps to give control back.
thread_local std::vector<std::unique_ptr<Fiber>> pool;
thread_local jmp_buf scheduler;
thread_local Fiber* starting = nullptr;

[[noreturn]] void fail(const char* fmt, const char* a, unsigned int b) {
    std::fprintf(stderr, "cuda emulation: kernel %s, block (%u,%u,%u): ", active->kernel->name,
                 active->block_idx.x, active->block_idx.y, active->block_idx.z);
    std::fprintf(stderr, fmt, a, b);
    std::fputc('\n', stderr);
    std::abort();
}

Fiber& self() { return *active->fibers[active->current]; }

unsigned int linear(const dim3& i, const dim3& d) { return (i.z * d.y + i.y) * d.x + i.x; }

void yield_to_scheduler() {
    if (_setjmp(self().env) == 0) _longjmp(scheduler, 1);
}

void resume(Fiber& fiber) {
    if (_setjmp(scheduler) == 0) _longjmp(fiber.env, 1);
}

// A fiber parks right after it is made, then runs the kernel once per block it is resumed
// for, parking after each.
void fiber_main() {
    if (_setjmp(starting->env) == 0) _longjmp(scheduler, 1);
    for (;;) {
        active->kernel->entry(active->args);
        self().state = State::Done;
        yield_to_scheduler();
    }
}

// Grows this thread's pool to `threads` fibers.
void ensure_fibers(std::size_t threads) {
    while (pool.size() < threads) {
        auto fiber = std::make_unique<Fiber>();
        fiber->stack.reset(new char[kStackBytes]);
        ucontext_t context;
        getcontext(&context);
        context.uc_stack.ss_sp = fiber->stack.get();
        context.uc_stack.ss_size = kStackBytes;
        context.uc_link = nullptr;
        makecontext(&context, fiber_main, 0);
        starting = fiber.get();
        if (_setjmp(scheduler) == 0) setcontext(&context);
        pool.push_back(std::move(fiber));
    }
}

// Releases a warp whose lanes all wait in a shuffle: each gets the value its source posted.
bool release_shuffles(unsigned int warp_begin, unsigned int warp_end) {
    for (unsigned int t = warp_begin; t < warp_end; ++t) {
        if (active->fibers[t]->state != State::AtShuffle) return false;
    }
    uint64_t posted[kWarp];
    for (unsigned int t = warp_begin; t < warp_end; ++t) posted[t - warp_begin] = active->fibers[t]->posted;
    for (unsigned int t = warp_begin; t < warp_end; ++t) {
        Fiber& f = *active->fibers[t];
        if (warp_begin + f.src_lane >= warp_end) {
            active->current = t;
            fail("%s reads lane %u, which this block does not have", f.what, f.src_lane);
        }
        f.posted = posted[f.src_lane];
        f.state = State::Runnable;
    }
    return true;
}

// Runs the block's fibers until all are done.
void run_block() {
    Launch& l = *active;
    const unsigned int threads = static_cast<unsigned int>(l.fibers.size());
    for (Fiber* f : l.fibers) f->state = State::Runnable;
    for (;;) {
        bool progressed = false;
        for (unsigned int t = 0; t < threads; ++t) {
            if (l.fibers[t]->state != State::Runnable) continue;
            l.current = t;
            resume(*l.fibers[t]);
            progressed = true;
        }
        if (progressed) continue;
        for (unsigned int w = 0; w < threads; w += kWarp) {
            progressed |= release_shuffles(w, w + kWarp < threads ? w + kWarp : threads);
        }
        if (progressed) continue;
        unsigned int done = 0, waiting = 0;
        for (const Fiber* f : l.fibers) {
            done += f->state == State::Done;
            waiting += f->state == State::AtBarrier;
        }
        if (done == threads) return;
        if (waiting == threads) {
            for (Fiber* f : l.fibers) f->state = State::Runnable;
            continue;
        }
        fail("%s: %u threads wait at __syncthreads() that the others never reach (they exited or wait "
             "in a shuffle)", "deadlock", waiting);
    }
}

}  // namespace

const dim3& thread_idx() { return self().idx; }
const dim3& block_idx() { return active->block_idx; }
const dim3& block_dim() { return active->block; }
const dim3& grid_dim() { return active->grid; }
void* dynamic_shared() { return active->shared.data(); }
unsigned int lane_id() { return linear(self().idx, active->block) % kWarp; }

void sync_threads() {
    self().state = State::AtBarrier;
    yield_to_scheduler();
}

uint64_t shuffle(uint64_t bits, unsigned int src_lane, const char* what) {
    Fiber& f = self();
    f.posted = bits;
    f.src_lane = src_lane;
    f.what = what;
    f.state = State::AtShuffle;
    yield_to_scheduler();
    return self().posted;
}

void launch(const KernelEntry& kernel, const unsigned int grid[3], const unsigned int block[3],
            unsigned int shared_bytes, void** args) {
    Launch launch;
    launch.kernel = &kernel;
    launch.args = args;
    launch.grid = {grid[0], grid[1], grid[2]};
    launch.block = {block[0], block[1], block[2]};
    launch.shared.assign(shared_bytes, 0);
    const std::size_t threads = static_cast<std::size_t>(block[0]) * block[1] * block[2];
    ensure_fibers(threads);
    for (std::size_t t = 0; t < threads; ++t) {
        Fiber& f = *pool[t];
        f.idx = {static_cast<unsigned int>(t % block[0]), static_cast<unsigned int>(t / block[0] % block[1]),
                 static_cast<unsigned int>(t / block[0] / block[1])};
        launch.fibers.push_back(&f);
    }
    Launch* outer = active;
    active = &launch;
    for (unsigned int z = 0; z < grid[2]; ++z) {
        for (unsigned int y = 0; y < grid[1]; ++y) {
            for (unsigned int x = 0; x < grid[0]; ++x) {
                launch.block_idx = {x, y, z};
                run_block();
            }
        }
    }
    active = outer;
}

}  // namespace emu

extern "C" const emu::KernelEntry* emu_kernels(std::size_t* count);

// Runs kernel `name` to completion. Returns 0, or 1 when no kernel has that name.
extern "C" int emu_launch(const char* name, const unsigned int* grid, const unsigned int* block,
                          unsigned int shared_bytes, void** args) {
    std::size_t count = 0;
    const emu::KernelEntry* table = emu_kernels(&count);
    for (std::size_t i = 0; i < count; ++i) {
        if (std::strcmp(table[i].name, name) == 0) {
            emu::launch(table[i], grid, block, shared_bytes, args);
            return 0;
        }
    }
    return 1;
}
