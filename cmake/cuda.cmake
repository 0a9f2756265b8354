# Turns the CUDA backend on when nvcc is found (ATTN_CUDA=AUTO), or as ATTN_CUDA says.
# Sets ATTN_WITH_CUDA and defines attn_configure_cuda_target().
set(ATTN_WITH_CUDA OFF)
if(NOT ATTN_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(ATTN_WITH_CUDA ON)
  elseif(ATTN_CUDA STREQUAL "ON")
    message(FATAL_ERROR "ATTN_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()

if(ATTN_WITH_CUDA)
  # sm_80 (mma.sync) and sm_90a (wgmma + TMA); the sm_80 code also runs on sm_90.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80-real 90a-real)
  endif()
  enable_language(CUDA)
  if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)  # CMake < 3.26 does not know nvcc's C++20 flag
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "attn: CUDA backend ON (${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "attn: CUDA backend OFF")
endif()

function(attn_configure_cuda_target target)
  target_compile_definitions(${target} PUBLIC ATTN_WITH_CUDA=1)
  target_link_libraries(${target} PUBLIC CUDA::cudart)
  # The Hopper forward (src/cuda/sm90) has a body only in an sm_90a pass; without one the
  # planner keeps to the sm80 kernels.
  if(CMAKE_CUDA_ARCHITECTURES MATCHES "90a")
    target_compile_definitions(${target} PRIVATE ATTN_CUDA_HAS_SM90A=1)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr --use_fast_math -lineinfo>)
  set_target_properties(${target} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
endfunction()
