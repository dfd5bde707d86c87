// Sizing TVM's CPU thread pool.
#ifndef TVMLM_MODEL_THREAD_POOL_H_
#define TVMLM_MODEL_THREAD_POOL_H_

#include <cstdint>

namespace tvmlm {

/*!
 * \brief Make TVM's parallel kernels launched from the *calling thread* use `num_threads` workers
 * (0 = every CPU this process may run on). TVM keeps one pool per launching thread, so this must
 * run on the thread that calls the model; it is cheap to call again (a no-op when unchanged).
 *
 * Why: left alone, TVM sizes its pool to half the hardware threads on x86 (it assumes SMT), which
 * on a 2-core VM is one worker and ~3x slower kernels.
 */
void ConfigureThreadPoolForThisThread(int64_t num_threads);

}  // namespace tvmlm

#endif  // TVMLM_MODEL_THREAD_POOL_H_
