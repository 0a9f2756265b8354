# GPU tools that need no GoogleTest, for scripts/gpu_check: the standalone forward checks
# (the cases of tests/cuda/forward_check.cpp) and the C ABI that bench/gpu_bench.py loads.
add_executable(attn_gpu_selftest tests/cuda/selftest/gpu_selftest.cpp tests/cuda/forward_check.cpp)
target_include_directories(attn_gpu_selftest PRIVATE ${PROJECT_SOURCE_DIR}/tests ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(attn_gpu_selftest PRIVATE attn)
set_target_properties(attn_gpu_selftest PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})

add_library(attn_gpu_capi SHARED bench/gpu/attn_capi.cpp)
target_include_directories(attn_gpu_capi PRIVATE ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(attn_gpu_capi PRIVATE attn)
set_target_properties(attn_gpu_capi PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})

# The same for the backward cases (tests/cuda/backward_check.cpp), for scripts/gpu_check_backward.
add_executable(attn_gpu_selftest_backward tests/cuda/selftest/gpu_selftest_backward.cpp tests/cuda/backward_check.cpp)
target_include_directories(attn_gpu_selftest_backward PRIVATE ${PROJECT_SOURCE_DIR}/tests ${PROJECT_SOURCE_DIR}/src)
target_link_libraries(attn_gpu_selftest_backward PRIVATE attn)
set_target_properties(attn_gpu_selftest_backward PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
