// Dispatch: validate once, pick the backend by the tensors' device, run.
#include "attn/attention.hpp"

#include <cstring>
#include <memory>

#include "cpu/backend.hpp"
#include "reference/reference.hpp"
#include "validate.hpp"
#if defined(ATTN_WITH_CUDA)
#include "cuda/backend.hpp"
#endif

namespace attn {
namespace {

void check_workspace(Workspace ws, std::size_t need) {
  ATTN_CHECK(need == 0 || (ws.data != nullptr && ws.bytes >= need), "workspace: expected at least ", need,
             " bytes, got ", ws.bytes);
}

struct OwnedWorkspace {
  Tensor t;
  Workspace ws;
  OwnedWorkspace(std::size_t bytes, Device dev) {
    if (bytes == 0) return;
    t = Tensor({std::int64_t(bytes)}, DType::u8, dev);
    ws = {t.data(), bytes};
  }
};

}  // namespace

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::automatic: return "auto";
    case Backend::reference: return "reference";
    case Backend::cpu: return "cpu";
    case Backend::cuda: return "cuda";
  }
  return "?";
}

Backend parse_backend(const char* text, const char* what) {
  if (std::strcmp(text, "auto") == 0) return Backend::automatic;
  if (std::strcmp(text, "reference") == 0) return Backend::reference;
  if (std::strcmp(text, "cpu") == 0) return Backend::cpu;
  if (std::strcmp(text, "cuda") == 0) return Backend::cuda;
  detail::fail(what, ": expected auto, reference, cpu or cuda, got '", text, "'");
}

std::size_t attention_forward_workspace_size(const ForwardArgs& args, Backend backend) {
  backend = detail::pick_backend(backend, args.q);
  if (backend == Backend::reference) return 0;
  const detail::AttentionProblem p = detail::resolve_forward(args, backend);
#if defined(ATTN_WITH_CUDA)
  if (backend == Backend::cuda) return cuda::forward_workspace_size(p);
#endif
  return cpu::forward_workspace_size(p);
}

std::size_t attention_backward_workspace_size(const BackwardArgs& args, Backend backend) {
  backend = detail::pick_backend(backend, args.q);
  if (backend == Backend::reference) return 0;
  const detail::BackwardProblem p = detail::resolve_backward(args, backend);
#if defined(ATTN_WITH_CUDA)
  if (backend == Backend::cuda) return cuda::backward_workspace_size(p);
#endif
  return cpu::backward_workspace_size(p);
}

void attention_forward(const ForwardArgs& args, Workspace ws, Backend backend) {
  backend = detail::pick_backend(backend, args.q);
  if (backend == Backend::reference) {
    detail::resolve_forward(args, backend);
    reference::forward(args);
    return;
  }
  const detail::AttentionProblem p = detail::resolve_forward(args, backend);
#if defined(ATTN_WITH_CUDA)
  if (backend == Backend::cuda) {
    check_workspace(ws, cuda::forward_workspace_size(p));
    cuda::forward(p, ws);
    return;
  }
#endif
  check_workspace(ws, cpu::forward_workspace_size(p));
  cpu::forward(p, ws);
}

void attention_backward(const BackwardArgs& args, Workspace ws, Backend backend) {
  backend = detail::pick_backend(backend, args.q);
  if (backend == Backend::reference) {
    detail::resolve_backward(args, backend);
    reference::backward(args);
    return;
  }
  const detail::BackwardProblem p = detail::resolve_backward(args, backend);
#if defined(ATTN_WITH_CUDA)
  if (backend == Backend::cuda) {
    check_workspace(ws, cuda::backward_workspace_size(p));
    cuda::backward(p, ws);
    return;
  }
#endif
  check_workspace(ws, cpu::backward_workspace_size(p));
  cpu::backward(p, ws);
}

void attention_forward(const ForwardArgs& args, Backend backend) {
  const Backend b = detail::pick_backend(backend, args.q);
  OwnedWorkspace w(attention_forward_workspace_size(args, b), args.q.device);
  attention_forward(args, w.ws, b);
}

void attention_backward(const BackwardArgs& args, Backend backend) {
  const Backend b = detail::pick_backend(backend, args.q);
  OwnedWorkspace w(attention_backward_workspace_size(args, b), args.q.device);
  attention_backward(args, w.ws, b);
}

}  // namespace attn
