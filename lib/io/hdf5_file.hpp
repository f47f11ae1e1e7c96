// A small RAII layer over the HDF5 C API: files, datasets of numbers (whole, or extendible 1-D
// series appended row by row) and scalar attributes, with every call checked (P2BW_HDF5_CHECK).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <map>
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

  // Extendible 1-D series (chunked, unlimited maximum size) for rows appended one at a time:
  // create_series makes an empty one (intermediate groups are created), append adds values at the
  // end, resize cuts it to `rows` (or grows it with zeros), length is the rows of any 1-D dataset.
  // Supported T: as for write. Series written by append stay open (and cached) until remove or
  // the file's end, so appending a row each step costs no lookups and no chunk re-reads.
  template <class T>
  void create_series(const std::string& name, hsize_t chunk_rows = 1024);
  template <class T>
  void append(const std::string& name, const std::vector<T>& values);
  void resize(const std::string& name, hsize_t rows);
  hsize_t length(const std::string& name) const;  // UserError if missing or not 1-D

  // Groups: create_group makes it and any missing parents (nothing if it exists), children lists
  // the names of the links in a group in name order, remove unlinks an object.
  void create_group(const std::string& name);
  std::vector<std::string> children(const std::string& group) const;
  void remove(const std::string& object);

  // Scalar attributes on an object ("/" for the file).
  void set_attribute(const std::string& object, const std::string& name, const std::string& value);
  void set_attribute(const std::string& object, const std::string& name, std::int64_t value);
  void set_attribute(const std::string& object, const std::string& name, double value);
  void set_attribute(const std::string& object, const std::string& name,
                     const std::vector<std::int64_t>& values);  // a 1-D attribute
  bool has_attribute(const std::string& object, const std::string& name) const;
  std::string string_attribute(const std::string& object, const std::string& name) const;
  std::int64_t int_attribute(const std::string& object, const std::string& name) const;
  double double_attribute(const std::string& object, const std::string& name) const;
  std::vector<std::int64_t> int_list_attribute(const std::string& object,
                                               const std::string& name) const;  // scalar or 1-D

  void flush();

 private:
  Handle& series(const std::string& name, hsize_t* rows);  // open once, kept open for append

  std::string path_;
  Handle file_;
  std::map<std::string, Handle> series_;  // series opened by append or resize, closed first
};

}  // namespace p2bw::io
