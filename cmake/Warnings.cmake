# Warnings and sanitizers are INTERFACE targets so that every module opts in the same way.
add_library(ndif_warnings INTERFACE)
target_compile_options(ndif_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Wunused
  -Woverloaded-virtual -Wformat=2 -Wimplicit-fallthrough)
if(NDIF_WERROR)
  target_compile_options(ndif_warnings INTERFACE -Werror)
endif()

add_library(ndif_sanitizers INTERFACE)
if(NDIF_SANITIZE)
  target_compile_options(ndif_sanitizers INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer
                                                   -fno-sanitize-recover=undefined)
  target_link_options(ndif_sanitizers INTERFACE -fsanitize=address,undefined)
endif()

# ndif_mpi_sanitizer_options(TARGET): for a program that initialises MPI (see the file).
function(ndif_mpi_sanitizer_options target)
  if(NDIF_SANITIZE)
    target_sources(${target} PRIVATE ${PROJECT_SOURCE_DIR}/cmake/asan_options_mpi.cpp)
  endif()
endfunction()

# ndif_module(NAME SOURCES... DEPS ...): one static library per module, public headers in
# include/NAME/ndif_sweep/NAME/.
function(ndif_module name)
  cmake_parse_arguments(M "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(ndif_${name} STATIC ${M_SOURCES})
  # Each module has its own include root: it sees the headers of the modules it links, no others.
  target_include_directories(ndif_${name} PUBLIC ${PROJECT_SOURCE_DIR}/include/${name})
  target_link_libraries(ndif_${name} PUBLIC ${M_DEPS} PRIVATE ${M_PRIVATE_DEPS} ndif_warnings ndif_sanitizers)
endfunction()
