#include "model/thread_pool.h"

#include <sched.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <thread>
#include <vector>

namespace tvmlm {

namespace ffi = tvm::ffi;

namespace {

// threading::ThreadGroup::AffinityMode::kSpecifyThreadShareAllCore: every worker may run on any
// of the CPUs we pass, i.e. no pinning beyond what the process already has.
constexpr int kShareAllCores = -3;

// TVM's pool workers busy-wait (sched_yield) for TVM_THREAD_POOL_SPIN_COUNT iterations after
// each job before sleeping; the default 300000 keeps two cores busy for ~0.2-0.5 s after every
// engine step, so an idle engine would not be idle. 10000 (~5 ms) still bridges the gaps between
// the kernels of a step and between consecutive steps. An explicit user setting wins. Done at load
// time: TVM reads the variable once, when the first worker starts, and setenv must not race with
// threads calling getenv.
const bool kSpinCountDefaulted = [] {
  return setenv("TVM_THREAD_POOL_SPIN_COUNT", "10000", /*overwrite=*/0) == 0;
}();

std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int i = 0; i < CPU_SETSIZE; ++i) {
      if (CPU_ISSET(i, &set)) cpus.push_back(i);
    }
  }
  if (cpus.empty()) {
    for (unsigned i = 0; i < std::max(1u, std::thread::hardware_concurrency()); ++i) cpus.push_back(i);
  }
  return cpus;
}

}  // namespace

void ConfigureThreadPoolForThisThread(int64_t num_threads) {
  thread_local int64_t configured = -1;
  if (configured == num_threads) return;

  static const std::vector<int> cpus = AllowedCpus();
  int64_t wanted = num_threads > 0 ? num_threads : static_cast<int64_t>(cpus.size());
  ffi::Array<ffi::String> cpu_names;
  for (int cpu : cpus) cpu_names.push_back(ffi::String(std::to_string(cpu)));
  // `runtime.config_threadpool(mode, nthreads, cpus)` first raises TVM's global concurrency cap to
  // len(cpus), then (re)configures this thread's pool to `nthreads` workers. A pool created earlier
  // on this thread keeps the worker count it was born with, so configure before the first kernel.
  static ffi::Function config = ffi::Function::GetGlobalRequired("runtime.config_threadpool");
  static ffi::Function num_threads_fn = ffi::Function::GetGlobalRequired("runtime.NumThreads");
  config(kShareAllCores, static_cast<int>(wanted), cpu_names);
  configured = num_threads;

  int64_t got = num_threads_fn().cast<int64_t>();
  if (got < std::min<int64_t>(wanted, static_cast<int64_t>(cpus.size()))) {
    std::cerr << "[tvmlm] warning: TVM thread pool on this thread has " << got
              << " workers, wanted " << wanted
              << " (the pool was created before tvmlm configured it)\n";
  }
}

}  // namespace tvmlm
