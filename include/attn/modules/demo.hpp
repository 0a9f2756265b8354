// Small end-to-end runs of every layer on random weights, one result per row, for the CLI's
// demo and the benches to print (the layers' own numbers: agreement of equivalent paths,
// conversion error, cache footprint, time).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attn/attention.hpp"

namespace attn::modules {

struct DemoRow {
  std::string name;    ///< e.g. "mla absorbed vs expanded"
  std::string config;  ///< the shapes it ran, e.g. "d_model 256, heads 8, S 32"
  double value = 0;
  std::string unit;    ///< "rel L2", "bytes/token", "ms"
};

/// Runs the layers on `backend` with weights drawn from `seed`; about 0.15 s on the reference
/// backend (2 cores), so it fits a demo or a smoke test.
std::vector<DemoRow> demo_rows(Backend backend = Backend::automatic, std::uint64_t seed = 1);

}  // namespace attn::modules
