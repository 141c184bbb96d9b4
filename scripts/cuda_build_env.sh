# Helpers for building torchext's CUDA kernels against a CUDA torch from pip; sourced by
# .ci/run and scripts/gpu_check.sh (bash).
#
#   find_cuda_home MAJOR
#       prints a CUDA toolkit folder (bin/nvcc and lib64/libcudart.so) of CUDA MAJOR, looked
#       for in $CUDA_HOME, $CUDA_PATH, /usr/local/cuda*, /opt/cuda* and beside the nvcc on
#       PATH (which may be a launcher script naming the real one); fails if there is none.
#   use_cuda_wheels TOOLKIT PYTHON LINK_DIR
#       a minimal toolkit has no cuBLAS/cuSPARSE headers and no unversioned libraries such as
#       libcublasLt.so, which the compile, LibTorch's CMake config and the link want; torch's
#       nvidia wheels have the headers and the libraries as libX.so.N. Puts the wheels'
#       include folders on CPATH and, in LINK_DIR, links each library the toolkit lacks
#       under its plain name for the build (CMAKE_LIBRARY_PATH, LIBRARY_PATH). At run time
#       torch's own dependencies provide the libraries.

nvcc_major() { "$1/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p'; }

find_cuda_home() {
  local major=$1 candidates=() d
  [[ -n ${CUDA_HOME:-} ]] && candidates+=("$CUDA_HOME")
  [[ -n ${CUDA_PATH:-} ]] && candidates+=("$CUDA_PATH")
  candidates+=(/usr/local/cuda)
  for d in $(ls -d /usr/local/cuda-* /opt/cuda* 2>/dev/null | sort -rV); do candidates+=("$d"); done
  if command -v nvcc >/dev/null; then
    candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")")
    for d in $(grep -aoE '/[^" ]*/bin/nvcc' "$(command -v nvcc)" 2>/dev/null || true); do
      candidates+=("$(dirname "$(dirname "$d")")")
    done
  fi
  for d in "${candidates[@]}"; do
    if [[ -x $d/bin/nvcc && -e $d/lib64/libcudart.so && $(nvcc_major "$d") == "$major" ]]; then
      readlink -f "$d"
      return 0
    fi
  done
  return 1
}

use_cuda_wheels() {
  local toolkit=$1 python=$2 link_dir=$3 site d so name wheels
  site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
  mkdir -p "$link_dir"
  # One folder per CUDA major (nvidia/cu13) in recent wheels, one per library before.
  wheels=("$site"/nvidia/cu[0-9]* "$site"/nvidia/{cublas,cusparse,cuda_runtime,cuda_nvrtc})
  for d in "${wheels[@]}"; do
    [[ -d $d/include ]] && CPATH=$d/include${CPATH:+:$CPATH}
  done
  for d in "${wheels[@]}"; do
    for so in "$d"/lib/lib*.so.*; do
      [[ -e $so ]] || continue
      name=$(basename "$so")
      name=${name%%.so.*}.so
      [[ -e $toolkit/lib64/$name || -e $link_dir/$name ]] || ln -s "$so" "$link_dir/$name"
    done
  done
  export CPATH
  export CMAKE_LIBRARY_PATH=$link_dir${CMAKE_LIBRARY_PATH:+:$CMAKE_LIBRARY_PATH}
  export LIBRARY_PATH=$link_dir${LIBRARY_PATH:+:$LIBRARY_PATH}
}
