// Finding the heaviest entries of a weight vector (the sampler's top-k, top-p and top-logprobs)
// without sorting the vocabulary: a thresholded pass that skips blocks on their maximum, and a
// histogram of the weights' float bits when the distribution is too flat for the threshold.
#ifndef TVMLM_SAMPLER_CANDIDATES_H_
#define TVMLM_SAMPLER_CANDIDATES_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tvmlm {

/*! \brief Heaviest first; equal weights by token id, so every selection is reproducible. */
struct Heavier {
  const float* w;
  bool operator()(int32_t a, int32_t b) const { return w[a] > w[b] || (w[a] == w[b] && a < b); }
};

/*! \brief Stop collecting once this many tokens, or this much mass, is held. */
enum class Until { kCount, kMass };

/*!
 * \brief Selections over weights w[0, n) (non-negative, the heaviest usually 1), with reusable
 * scratch. Each Keep* leaves in `ids` exactly the tokens that, heaviest first, reach the goal.
 */
class CandidateSelector {
 public:
  /*! \brief The k heaviest (ties: lower id), in no particular order. */
  void KeepTopK(const float* w, int64_t n, int64_t k, std::vector<int32_t>* ids);
  /*!
   * \brief The smallest heaviest-first prefix whose mass reaches `target` (the token that
   * crosses it included); returns its mass. Only its lightest part is ever sorted.
   */
  double KeepNucleus(const float* w, int64_t n, double target, std::vector<int32_t>* ids);
  /*! \brief The `count` heaviest, heaviest first. */
  void KeepTopSorted(const float* w, int64_t n, int64_t count, std::vector<int32_t>* ids);

 private:
  /*!
   * \brief ids := a superset of the goal's tokens, arranged so that ids[0, certain) are in it for
   * sure (each heavier than all the rest); returns `certain`. `certain_mass` gets their mass.
   */
  size_t Collect(const float* w, int64_t n, Until until, double amount, std::vector<int32_t>* ids,
                 double* certain_mass);
  size_t CollectByHistogram(const float* w, int64_t n, Until until, double amount,
                            std::vector<int32_t>* ids, double* certain_mass);

  std::vector<double> bucket_mass_;
  std::vector<int64_t> bucket_count_;
  std::vector<int32_t> boundary_;
};

/*! \brief Sum of w over ids. */
double Mass(const float* w, const std::vector<int32_t>& ids);

/*!
 * \brief Append the ids with w[i] >= t to `out` (cleared first); return their mass. Blocks whose
 * maximum is below t are skipped after one vectorized pass.
 */
double CollectAtLeast(const float* w, int64_t n, float t, std::vector<int32_t>* out);

}  // namespace tvmlm

#endif  // TVMLM_SAMPLER_CANDIDATES_H_
