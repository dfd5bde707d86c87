// Generate greedily from a compiled tvmlm package through the public C++ API.
//
//   tvmlm_host <package dir> <prompt token id>...   prints the generated token ids, one line
//
// A package is what tvmlm compiles into its cache (lib.so, params.safetensors, metadata.json);
// `python -c "from tvmlm.compile import prepare_package; print(prepare_package('MODEL').path)"`.
#include <tvmlm/engine.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s <package dir> <prompt token id>...\n", argv[0]);
    return 2;
  }
  std::vector<int32_t> prompt;
  for (int i = 2; i < argc; ++i) prompt.push_back(std::atoi(argv[i]));

  std::mutex mu;
  std::condition_variable done_cv;
  std::vector<int32_t> output;
  std::string finish, error;

  auto engine = tvmlm::CreateThreadedEngine();
  engine->Init("cpu:0", [&](std::vector<tvmlm::RequestDelta> deltas) {
    std::lock_guard<std::mutex> lock(mu);
    for (const tvmlm::RequestDelta& d : deltas) {
      output.insert(output.end(), d.token_ids.begin(), d.token_ids.end());
      if (d.finish_reason != tvmlm::FinishReason::kNotFinished) {
        finish = tvmlm::FinishReasonName(d.finish_reason);
        error = d.error;
        done_cv.notify_all();
      }
    }
  }, nullptr);
  std::thread step_loop([&] { engine->RunBackgroundLoop(); });
  std::thread stream_loop([&] { engine->RunBackgroundStreamBackLoop(); });

  int status = 0;
  try {
    engine->Reload(std::string(R"({"model": ")") + argv[1] + R"(", "max_num_sequence": 1})");
    engine->AddRequest("r0", prompt, R"({"max_tokens": 8, "temperature": 0, "ignore_eos": true})");
    std::unique_lock<std::mutex> lock(mu);
    done_cv.wait(lock, [&] { return !finish.empty(); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    status = 1;
  }
  engine->ExitBackgroundLoop();
  step_loop.join();
  stream_loop.join();
  if (status == 0) {
    for (size_t i = 0; i < output.size(); ++i) std::printf("%s%d", i ? " " : "", output[i]);
    std::printf("\nfinish_reason=%s%s%s\n", finish.c_str(), error.empty() ? "" : " error=", error.c_str());
  }
  return status;
}
