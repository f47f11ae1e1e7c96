// HDF5 wrapper implementation; see hdf5_file.hpp.
#include "io/hdf5_file.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <type_traits>

#include "core/error.hpp"

namespace p2bw::io {

namespace {

template <class T>
hid_t memory_type() {
  if constexpr (std::is_same_v<T, float>)
    return H5T_NATIVE_FLOAT;
  else if constexpr (std::is_same_v<T, double>)
    return H5T_NATIVE_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return H5T_NATIVE_INT64;
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return H5T_NATIVE_UINT8;
  else
    static_assert(sizeof(T) == 0, "unsupported HDF5 element type");
}

// A dataset or attribute of numbers; anything else (strings, compounds) is a foreign file.
void require_numeric(hid_t object, const std::string& path, const std::string& name) {
  const bool attribute = H5Iget_type(object) == H5I_ATTR;
  Handle type(P2BW_HDF5_CHECK(attribute ? H5Aget_type(object) : H5Dget_type(object)));
  const H5T_class_t kind = H5Tget_class(type.get());
  if (kind != H5T_INTEGER && kind != H5T_FLOAT)
    throw UserError(fmt::format("{}: {} {} does not hold numbers (allowed: a file written by p2bw)",
                                path, attribute ? "attribute" : "dataset", name));
}

bool link_exists(hid_t file, const std::string& object) {
  if (object == "/") return true;
  // Every prefix must exist before H5Lexists may be asked about the next component.
  size_t at = 0;
  while ((at = object.find('/', at + 1)) != std::string::npos)
    if (H5Lexists(file, object.substr(0, at).c_str(), H5P_DEFAULT) <= 0) return false;
  return H5Lexists(file, object.c_str(), H5P_DEFAULT) > 0;
}

// The dataset `name`; UserError if there is none (or something else) at that path.
Handle open_dataset(hid_t file, const std::string& path, const std::string& name) {
  if (!link_exists(file, name))
    throw UserError(
        fmt::format("{}: dataset {} is missing (allowed: a file with {})", path, name, name));
  Handle object(P2BW_HDF5_CHECK(H5Oopen(file, name.c_str(), H5P_DEFAULT)));
  if (H5Iget_type(object.get()) != H5I_DATASET)
    throw UserError(
        fmt::format("{}: {} is not a dataset (allowed: a file with dataset {})", path, name, name));
  return object;
}

Handle intermediate_groups() {
  Handle list(P2BW_HDF5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
  P2BW_HDF5_CHECK(H5Pset_create_intermediate_group(list.get(), 1));
  return list;
}

// Turns HDF5's own error stack printing off: every failure is reported through our messages.
struct SilenceHdf5 {
  SilenceHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

}  // namespace

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    Handle old(id_);
    id_ = other.id_;
    other.id_ = -1;
  }
  return *this;
}

Handle::~Handle() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      H5Fclose(id_);
      break;
    case H5I_GROUP:
      H5Gclose(id_);
      break;
    case H5I_DATASET:
      H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      H5Tclose(id_);
      break;
    case H5I_ATTR:
      H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      H5Pclose(id_);
      break;
    default:
      break;
  }
}

H5File::H5File(const std::string& path, Mode mode) : path_(path) {
  static SilenceHdf5 silence;
  hid_t id = -1;
  if (mode == Mode::create) {
    id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (id < 0) throw UserError(path + ": cannot create the HDF5 file (allowed: a writable path)");
  } else {
    if (!std::filesystem::is_regular_file(path))
      throw UserError(path + ": no such file (allowed: an existing HDF5 file)");
    if (H5Fis_hdf5(path.c_str()) <= 0)
      throw UserError(path + ": not an HDF5 file (allowed: an HDF5 file written by p2bw)");
    id = H5Fopen(path.c_str(), mode == Mode::read ? H5F_ACC_RDONLY : H5F_ACC_RDWR, H5P_DEFAULT);
#if H5_VERSION_GE(1, 10, 7)
    if (id < 0 && mode == Mode::read) {
      // A file that a running p2bw still writes (and flushes every step) is locked; reading needs
      // no lock, so read it as of its last flush.
      Handle access(P2BW_HDF5_CHECK(H5Pcreate(H5P_FILE_ACCESS)));
      P2BW_HDF5_CHECK(H5Pset_file_locking(access.get(), false, true));
      id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, access.get());
    }
#endif
    if (id < 0)
      throw UserError(path +
                      ": cannot open the HDF5 file (allowed: a readable, complete HDF5 file)");
  }
  file_ = Handle(id);
}

bool H5File::exists(const std::string& object) const {
  return link_exists(file_.get(), object);
}

template <class T>
void H5File::write(const std::string& name, const std::vector<T>& values,
                   const std::vector<hsize_t>& shape) {
  hsize_t count = 1;
  for (hsize_t n : shape) count *= n;
  P2BW_ASSERT(count == values.size(),
              fmt::format("{}: {} values for shape of {}", name, values.size(), count));
  Handle space(
      P2BW_HDF5_CHECK(H5Screate_simple(static_cast<int>(shape.size()), shape.data(), nullptr)));
  Handle links = intermediate_groups();
  Handle set(P2BW_HDF5_CHECK(H5Dcreate2(file_.get(), name.c_str(), memory_type<T>(), space.get(),
                                        links.get(), H5P_DEFAULT, H5P_DEFAULT)));
  P2BW_HDF5_CHECK(
      H5Dwrite(set.get(), memory_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
}

template <class T>
std::vector<T> H5File::read(const std::string& name, std::vector<hsize_t>* shape) const {
  Handle set = open_dataset(file_.get(), path_, name);
  require_numeric(set.get(), path_, name);
  Handle space(P2BW_HDF5_CHECK(H5Dget_space(set.get())));
  const int rank = P2BW_HDF5_CHECK(H5Sget_simple_extent_ndims(space.get()));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  P2BW_HDF5_CHECK(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr));
  hsize_t count = 1;
  for (hsize_t n : dims) count *= n;
  std::vector<T> values(count);
  if (count > 0)
    P2BW_HDF5_CHECK(
        H5Dread(set.get(), memory_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
  if (shape) *shape = dims;
  return values;
}

template void H5File::write(const std::string&, const std::vector<float>&,
                            const std::vector<hsize_t>&);
template void H5File::write(const std::string&, const std::vector<double>&,
                            const std::vector<hsize_t>&);
template void H5File::write(const std::string&, const std::vector<std::int32_t>&,
                            const std::vector<hsize_t>&);
template void H5File::write(const std::string&, const std::vector<std::int64_t>&,
                            const std::vector<hsize_t>&);
template void H5File::write(const std::string&, const std::vector<std::uint8_t>&,
                            const std::vector<hsize_t>&);
template std::vector<float> H5File::read(const std::string&, std::vector<hsize_t>*) const;
template std::vector<double> H5File::read(const std::string&, std::vector<hsize_t>*) const;
template std::vector<std::int32_t> H5File::read(const std::string&, std::vector<hsize_t>*) const;
template std::vector<std::int64_t> H5File::read(const std::string&, std::vector<hsize_t>*) const;
template std::vector<std::uint8_t> H5File::read(const std::string&, std::vector<hsize_t>*) const;

namespace {

// The open dataset `name` and its current rows; UserError if it is missing or not 1-D.
Handle open_series(hid_t file, const std::string& path, const std::string& name, hsize_t* rows) {
  Handle set = open_dataset(file, path, name);
  Handle space(P2BW_HDF5_CHECK(H5Dget_space(set.get())));
  if (P2BW_HDF5_CHECK(H5Sget_simple_extent_ndims(space.get())) != 1)
    throw UserError(
        fmt::format("{}: dataset {} is not one-dimensional (allowed: a 1-D series)", path, name));
  P2BW_HDF5_CHECK(H5Sget_simple_extent_dims(space.get(), rows, nullptr));
  return set;
}

}  // namespace

template <class T>
void H5File::create_series(const std::string& name, hsize_t chunk_rows) {
  const hsize_t rows = 0, unlimited = H5S_UNLIMITED, chunk = chunk_rows > 0 ? chunk_rows : 1;
  Handle space(P2BW_HDF5_CHECK(H5Screate_simple(1, &rows, &unlimited)));
  Handle create(P2BW_HDF5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  P2BW_HDF5_CHECK(H5Pset_chunk(create.get(), 1, &chunk));
  Handle links = intermediate_groups();
  Handle set(P2BW_HDF5_CHECK(H5Dcreate2(file_.get(), name.c_str(), memory_type<T>(), space.get(),
                                        links.get(), create.get(), H5P_DEFAULT)));
}

Handle& H5File::series(const std::string& name, hsize_t* rows) {
  auto at = series_.find(name);
  if (at == series_.end()) return series_[name] = open_series(file_.get(), path_, name, rows);
  Handle space(P2BW_HDF5_CHECK(H5Dget_space(at->second.get())));
  P2BW_HDF5_CHECK(H5Sget_simple_extent_dims(space.get(), rows, nullptr));
  return at->second;
}

template <class T>
void H5File::append(const std::string& name, const std::vector<T>& values) {
  if (values.empty()) return;
  hsize_t rows = 0;
  const Handle& set = series(name, &rows);
  const hsize_t count = values.size(), grown = rows + count;
  P2BW_HDF5_CHECK(H5Dset_extent(set.get(), &grown));
  Handle file_space(P2BW_HDF5_CHECK(H5Dget_space(set.get())));
  P2BW_HDF5_CHECK(
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &rows, nullptr, &count, nullptr));
  Handle memory_space(P2BW_HDF5_CHECK(H5Screate_simple(1, &count, nullptr)));
  P2BW_HDF5_CHECK(H5Dwrite(set.get(), memory_type<T>(), memory_space.get(), file_space.get(),
                           H5P_DEFAULT, values.data()));
}

void H5File::resize(const std::string& name, hsize_t rows) {
  hsize_t current = 0;
  const Handle& set = series(name, &current);
  if (rows != current) P2BW_HDF5_CHECK(H5Dset_extent(set.get(), &rows));
}

hsize_t H5File::length(const std::string& name) const {
  hsize_t rows = 0;
  open_series(file_.get(), path_, name, &rows);
  return rows;
}

#define P2BW_SERIES(T)                                                 \
  template void H5File::create_series<T>(const std::string&, hsize_t); \
  template void H5File::append(const std::string&, const std::vector<T>&);
P2BW_SERIES(float)
P2BW_SERIES(double)
P2BW_SERIES(std::int32_t)
P2BW_SERIES(std::int64_t)
P2BW_SERIES(std::uint8_t)
#undef P2BW_SERIES

void H5File::create_group(const std::string& name) {
  if (exists(name)) return;
  Handle links = intermediate_groups();
  Handle group(P2BW_HDF5_CHECK(
      H5Gcreate2(file_.get(), name.c_str(), links.get(), H5P_DEFAULT, H5P_DEFAULT)));
}

std::vector<std::string> H5File::children(const std::string& group) const {
  if (!exists(group))
    throw UserError(
        fmt::format("{}: group {} is missing (allowed: a file with {})", path_, group, group));
  Handle target(P2BW_HDF5_CHECK(H5Gopen2(file_.get(), group.c_str(), H5P_DEFAULT)));
  H5G_info_t info;
  P2BW_HDF5_CHECK(H5Gget_info(target.get(), &info));
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t size = P2BW_HDF5_CHECK(H5Lget_name_by_idx(
        target.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT));
    std::string name(static_cast<size_t>(size) + 1, '\0');
    P2BW_HDF5_CHECK(H5Lget_name_by_idx(target.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i,
                                       name.data(), name.size(), H5P_DEFAULT));
    name.resize(static_cast<size_t>(size));
    names.push_back(name);
  }
  return names;
}

void H5File::remove(const std::string& object) {
  series_.clear();
  P2BW_HDF5_CHECK(H5Ldelete(file_.get(), object.c_str(), H5P_DEFAULT));
}

namespace {

Handle open_object(hid_t file, const std::string& object) {
  return Handle(P2BW_HDF5_CHECK(H5Oopen(file, object.c_str(), H5P_DEFAULT)));
}

void replace_attribute(hid_t object, const std::string& name) {
  if (P2BW_HDF5_CHECK(H5Aexists(object, name.c_str())) > 0)
    P2BW_HDF5_CHECK(H5Adelete(object, name.c_str()));
}

template <class T>
void set_numeric(hid_t file, const std::string& object, const std::string& name, T value) {
  Handle target = open_object(file, object);
  replace_attribute(target.get(), name);
  Handle space(P2BW_HDF5_CHECK(H5Screate(H5S_SCALAR)));
  Handle attribute(P2BW_HDF5_CHECK(H5Acreate2(target.get(), name.c_str(), memory_type<T>(),
                                              space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  P2BW_HDF5_CHECK(H5Awrite(attribute.get(), memory_type<T>(), &value));
}

Handle open_attribute(hid_t file, const std::string& path, const std::string& object,
                      const std::string& name) {
  if (!link_exists(file, object))
    throw UserError(
        fmt::format("{}: {} is missing (allowed: a file written by p2bw)", path, object));
  Handle target = open_object(file, object);
  if (P2BW_HDF5_CHECK(H5Aexists(target.get(), name.c_str())) <= 0)
    throw UserError(fmt::format(
        "{}: attribute {} of {} is missing (allowed: a file written by p2bw)", path, name, object));
  return Handle(P2BW_HDF5_CHECK(H5Aopen(target.get(), name.c_str(), H5P_DEFAULT)));
}

template <class T>
T get_numeric(hid_t file, const std::string& path, const std::string& object,
              const std::string& name) {
  Handle attribute = open_attribute(file, path, object, name);
  require_numeric(attribute.get(), path, name + " of " + object);
  Handle space(P2BW_HDF5_CHECK(H5Aget_space(attribute.get())));
  if (P2BW_HDF5_CHECK(H5Sget_simple_extent_npoints(space.get())) != 1)
    throw UserError(fmt::format(
        "{}: attribute {} of {} is not a single number (allowed: a file written by p2bw)", path,
        name, object));
  T value{};
  P2BW_HDF5_CHECK(H5Aread(attribute.get(), memory_type<T>(), &value));
  return value;
}

}  // namespace

void H5File::set_attribute(const std::string& object, const std::string& name,
                           const std::string& value) {
  Handle target = open_object(file_.get(), object);
  replace_attribute(target.get(), name);
  Handle type(P2BW_HDF5_CHECK(H5Tcopy(H5T_C_S1)));
  P2BW_HDF5_CHECK(H5Tset_size(type.get(), H5T_VARIABLE));
  P2BW_HDF5_CHECK(H5Tset_cset(type.get(), H5T_CSET_UTF8));
  Handle space(P2BW_HDF5_CHECK(H5Screate(H5S_SCALAR)));
  Handle attribute(P2BW_HDF5_CHECK(
      H5Acreate2(target.get(), name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  const char* text = value.c_str();
  P2BW_HDF5_CHECK(H5Awrite(attribute.get(), type.get(), &text));
}

void H5File::set_attribute(const std::string& object, const std::string& name, std::int64_t value) {
  set_numeric(file_.get(), object, name, value);
}

void H5File::set_attribute(const std::string& object, const std::string& name, double value) {
  set_numeric(file_.get(), object, name, value);
}

void H5File::set_attribute(const std::string& object, const std::string& name,
                           const std::vector<std::int64_t>& values) {
  Handle target = open_object(file_.get(), object);
  replace_attribute(target.get(), name);
  const hsize_t count = values.size();
  Handle space(P2BW_HDF5_CHECK(H5Screate_simple(1, &count, nullptr)));
  Handle attribute(P2BW_HDF5_CHECK(H5Acreate2(target.get(), name.c_str(), H5T_NATIVE_INT64,
                                              space.get(), H5P_DEFAULT, H5P_DEFAULT)));
  if (count > 0) P2BW_HDF5_CHECK(H5Awrite(attribute.get(), H5T_NATIVE_INT64, values.data()));
}

bool H5File::has_attribute(const std::string& object, const std::string& name) const {
  if (!exists(object)) return false;
  Handle target = open_object(file_.get(), object);
  return P2BW_HDF5_CHECK(H5Aexists(target.get(), name.c_str())) > 0;
}

std::vector<std::int64_t> H5File::int_list_attribute(const std::string& object,
                                                     const std::string& name) const {
  Handle attribute = open_attribute(file_.get(), path_, object, name);
  require_numeric(attribute.get(), path_, name + " of " + object);
  Handle space(P2BW_HDF5_CHECK(H5Aget_space(attribute.get())));
  const auto count = P2BW_HDF5_CHECK(H5Sget_simple_extent_npoints(space.get()));
  std::vector<std::int64_t> values(static_cast<size_t>(count));
  if (count > 0) P2BW_HDF5_CHECK(H5Aread(attribute.get(), H5T_NATIVE_INT64, values.data()));
  return values;
}

std::string H5File::string_attribute(const std::string& object, const std::string& name) const {
  Handle attribute = open_attribute(file_.get(), path_, object, name);
  Handle type(P2BW_HDF5_CHECK(H5Aget_type(attribute.get())));
  Handle space(P2BW_HDF5_CHECK(H5Aget_space(attribute.get())));
  if (H5Tget_class(type.get()) != H5T_STRING ||
      P2BW_HDF5_CHECK(H5Sget_simple_extent_npoints(space.get())) != 1)
    throw UserError(
        fmt::format("{}: attribute {} of {} is not a string (allowed: a file written by p2bw)",
                    path_, name, object));
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle memory(P2BW_HDF5_CHECK(H5Tcopy(H5T_C_S1)));
    P2BW_HDF5_CHECK(H5Tset_size(memory.get(), H5T_VARIABLE));
    P2BW_HDF5_CHECK(H5Tset_cset(memory.get(), H5Tget_cset(type.get())));
    char* text = nullptr;
    P2BW_HDF5_CHECK(H5Aread(attribute.get(), memory.get(), &text));
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  std::string value(H5Tget_size(type.get()), '\0');
  P2BW_HDF5_CHECK(H5Aread(attribute.get(), type.get(), value.data()));
  return value.substr(0, value.find('\0'));
}

std::int64_t H5File::int_attribute(const std::string& object, const std::string& name) const {
  return get_numeric<std::int64_t>(file_.get(), path_, object, name);
}

double H5File::double_attribute(const std::string& object, const std::string& name) const {
  return get_numeric<double>(file_.get(), path_, object, name);
}

void H5File::flush() {
  P2BW_HDF5_CHECK(H5Fflush(file_.get(), H5F_SCOPE_GLOBAL));
}

}  // namespace p2bw::io
