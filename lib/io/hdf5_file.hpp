// A small RAII layer over the HDF5 C API: files, datasets of numbers (whole, or extendible 1-D
// series appended row by row) and scalar attributes, with every call checked (P2BW_HDF5_CHECK).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace p2bw::io {

// An owned HDF5 identifier, closed with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& other) noexcept : id_(other.id_) { other.id_ = -1; }
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle();
  hid_t get() const { return id_; }

 private:
  hid_t id_ = -1;
};

class H5File {
 public:
  enum class Mode { read, read_write, create };
  // Opening a file that is missing or not HDF5 is a UserError naming the file.
  H5File(const std::string& path, Mode mode);
  const std::string& path() const { return path_; }
  hid_t id() const { return file_.get(); }
  bool exists(const std::string& object) const;  // a group or dataset at this path

  // Whole datasets; intermediate groups are created. Supported T: float, double, int32, int64,
  // uint8.
  template <class T>
  void write(const std::string& name, const std::vector<T>& values,
             const std::vector<hsize_t>& shape);
  template <class T>
  std::vector<T> read(const std::string& name, std::vector<hsize_t>* shape = nullptr) const;

  // Scalar attributes on an object ("/" for the file).
  void set_attribute(const std::string& object, const std::string& name, const std::string& value);
  void set_attribute(const std::string& object, const std::string& name, std::int64_t value);
  void set_attribute(const std::string& object, const std::string& name, double value);
  std::string string_attribute(const std::string& object, const std::string& name) const;
  std::int64_t int_attribute(const std::string& object, const std::string& name) const;
  double double_attribute(const std::string& object, const std::string& name) const;

  void flush();

 private:
  std::string path_;
  Handle file_;
};

}  // namespace p2bw::io
