# find_package(tvmlm CONFIG): the imported target tvmlm::tvmlm (libtvmlm.so + public headers).
# Installed at <site-packages>/tvmlm/share/cmake/tvmlm; the TVM runtime libraries it needs live in
# the sibling tvm/ and tvm_ffi/ packages (libtvmlm.so finds them through its RPATH at run time;
# the linker is told where they are so it can check libtvmlm.so's own dependencies).
get_filename_component(_tvmlm_root "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
get_filename_component(_tvmlm_site "${_tvmlm_root}/.." ABSOLUTE)
if(NOT EXISTS "${_tvmlm_root}/lib/libtvmlm.so")
  set(tvmlm_FOUND FALSE)
  set(tvmlm_NOT_FOUND_MESSAGE "libtvmlm.so not found under ${_tvmlm_root}/lib")
  return()
endif()
if(NOT TARGET tvmlm::tvmlm)
  add_library(tvmlm::tvmlm SHARED IMPORTED)
  set_target_properties(tvmlm::tvmlm PROPERTIES
    IMPORTED_LOCATION "${_tvmlm_root}/lib/libtvmlm.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_tvmlm_root}/include"
    INTERFACE_COMPILE_FEATURES cxx_std_17
    INTERFACE_LINK_OPTIONS "LINKER:-rpath-link,${_tvmlm_site}/tvm/lib:${_tvmlm_site}/tvm_ffi/lib")
endif()
set(tvmlm_FOUND TRUE)
