// Output folders and files with user-facing errors; see paths.hpp.
#include "io/paths.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "core/error.hpp"

namespace p2bw::io {

namespace fs = std::filesystem;

void make_output_dir(const std::string& dir, const std::string& what) {
  const fs::path path = fs::absolute(dir);
  // The first existing ancestor that is not a folder is what blocks the path.
  for (fs::path up = path; !up.empty(); up = up.parent_path()) {
    std::error_code error;
    const fs::file_status status = fs::status(up, error);
    if (fs::exists(status) && !fs::is_directory(status))
      throw UserError(fmt::format("{} {}: {} is a file, not a folder (allowed: a folder path)",
                                  what, dir, up.string()));
    if (fs::exists(status) || up == up.parent_path()) break;
  }
  std::error_code error;
  fs::create_directories(path, error);
  if (error)
    throw UserError(fmt::format("{} {}: cannot create the folder: {} (allowed: a writable folder)",
                                what, dir, error.message()));
  if (::access(path.c_str(), W_OK | X_OK) != 0)
    throw UserError(
        fmt::format("{} {}: the folder is not writable: {} (allowed: a writable folder)", what, dir,
                    std::strerror(errno)));
}

void prepare_output_file(const std::string& path, const std::string& what) {
  const fs::path absolute = fs::absolute(path);
  std::error_code error;
  if (fs::is_directory(absolute, error))
    throw UserError(fmt::format(
        "{} {}: is a folder (allowed: a file path; the file is written there)", what, path));
  make_output_dir(absolute.parent_path().string(), what);
}

void write_text_file(const std::string& path, const std::string& text, const std::string& what) {
  prepare_output_file(path, what);
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file)
    throw UserError(fmt::format("{} {}: cannot write the file: {} (allowed: a writable path)", what,
                                path, std::strerror(errno)));
  file << text;
  if (!file.flush())
    throw UserError(fmt::format("{} {}: writing the file failed (allowed: a path with free space)",
                                what, path));
}

}  // namespace p2bw::io
