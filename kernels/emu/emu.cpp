// The scheduler behind cuda_emu.h: fibers, barriers, shuffles and launches.
#include "cuda_emu.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace emu {
namespace {

constexpr std::size_t kStackBytes = 64 * 1024;
constexpr unsigned int kWarp = 32;

enum class State { Runnable, AtBarrier, AtShuffle, Done };

struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
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
    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    unsigned int current = 0;
};

thread_local Launch* active = nullptr;

[[noreturn]] void fail(const char* fmt, const char* a, unsigned int b) {
    std::fprintf(stderr, "cuda emulation: kernel %s, block (%u,%u,%u): ", active->kernel->name,
                 active->block_idx.x, active->block_idx.y, active->block_idx.z);
    std::fprintf(stderr, fmt, a, b);
    std::fputc('\n', stderr);
    std::abort();
}

Fiber& self() { return active->fibers[active->current]; }

unsigned int linear(const dim3& i, const dim3& d) { return (i.z * d.y + i.y) * d.x + i.x; }

void yield_to_scheduler() { swapcontext(&self().context, &active->scheduler); }

void fiber_main() {
    active->kernel->entry(active->args);
    self().state = State::Done;
    // Returning resumes uc_link, the scheduler.
}

// Releases a warp whose lanes all wait in a shuffle: each gets the value its source posted.
bool release_shuffles(unsigned int warp_begin, unsigned int warp_end) {
    for (unsigned int t = warp_begin; t < warp_end; ++t) {
        if (active->fibers[t].state != State::AtShuffle) return false;
    }
    std::vector<uint64_t> posted;
    for (unsigned int t = warp_begin; t < warp_end; ++t) posted.push_back(active->fibers[t].posted);
    for (unsigned int t = warp_begin; t < warp_end; ++t) {
        Fiber& f = active->fibers[t];
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
    for (unsigned int t = 0; t < threads; ++t) {
        Fiber& f = l.fibers[t];
        f.state = State::Runnable;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.data();
        f.context.uc_stack.ss_size = f.stack.size();
        f.context.uc_link = &l.scheduler;
        makecontext(&f.context, fiber_main, 0);
    }
    for (;;) {
        bool progressed = false;
        for (unsigned int t = 0; t < threads; ++t) {
            if (l.fibers[t].state != State::Runnable) continue;
            l.current = t;
            swapcontext(&l.scheduler, &l.fibers[t].context);
            progressed = true;
        }
        if (progressed) continue;
        for (unsigned int w = 0; w < threads; w += kWarp) {
            progressed |= release_shuffles(w, w + kWarp < threads ? w + kWarp : threads);
        }
        if (progressed) continue;
        unsigned int done = 0, waiting = 0;
        for (const Fiber& f : l.fibers) {
            done += f.state == State::Done;
            waiting += f.state == State::AtBarrier;
        }
        if (done == threads) return;
        if (waiting == threads) {
            for (Fiber& f : l.fibers) f.state = State::Runnable;
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

}  // namespace emu

extern "C" const emu::KernelEntry* emu_kernels(std::size_t* count);

// Runs kernel `name` to completion. Returns 0, or 1 when no kernel has that name.
extern "C" int emu_launch(const char* name, const unsigned int* grid, const unsigned int* block,
                          unsigned int shared_bytes, void** args) {
    std::size_t count = 0;
    const emu::KernelEntry* table = emu_kernels(&count);
    const emu::KernelEntry* kernel = nullptr;
    for (std::size_t i = 0; i < count; ++i) {
        if (std::strcmp(table[i].name, name) == 0) kernel = &table[i];
    }
    if (!kernel) return 1;
    emu::Launch launch;
    launch.kernel = kernel;
    launch.args = args;
    launch.grid = {grid[0], grid[1], grid[2]};
    launch.block = {block[0], block[1], block[2]};
    launch.shared.assign(shared_bytes, 0);
    launch.fibers.resize(static_cast<std::size_t>(block[0]) * block[1] * block[2]);
    for (std::size_t t = 0; t < launch.fibers.size(); ++t) {
        emu::Fiber& f = launch.fibers[t];
        f.stack.resize(emu::kStackBytes);
        f.idx = {static_cast<unsigned int>(t % block[0]), static_cast<unsigned int>(t / block[0] % block[1]),
                 static_cast<unsigned int>(t / block[0] / block[1])};
    }
    emu::Launch* outer = emu::active;
    emu::active = &launch;
    for (unsigned int z = 0; z < grid[2]; ++z) {
        for (unsigned int y = 0; y < grid[1]; ++y) {
            for (unsigned int x = 0; x < grid[0]; ++x) {
                launch.block_idx = {x, y, z};
                emu::run_block();
            }
        }
    }
    emu::active = outer;
    return 0;
}
