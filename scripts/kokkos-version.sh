# kokkos_version DIR: MAJOR.MINOR.PATCH of the Kokkos source folder DIR, from its top CMakeLists.txt
# (sourced by scripts/cuda-bundle and scripts/kokkos4-host-check).
kokkos_version() {
  local f=$1/CMakeLists.txt
  printf '%s.%s.%s' "$(sed -n 's/^set(Kokkos_VERSION_MAJOR \([0-9]*\)).*/\1/p' "$f")" \
    "$(sed -n 's/^set(Kokkos_VERSION_MINOR \([0-9]*\)).*/\1/p' "$f")" \
    "$(sed -n 's/^set(Kokkos_VERSION_PATCH \([0-9]*\)).*/\1/p' "$f")"
}
